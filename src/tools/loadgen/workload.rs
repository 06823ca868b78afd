//! What each request of a run is (`--mode`): the hashed mode's salted fingerprints
//! (`POST /v1/discover`, `bodies`) or the private mode's blinded elements
//! (`POST /v1/private/evaluate`, `private`). The sending loop is the same for both; only the
//! bodies, the route, how an answer is read and where a 410 sends the client differ.

use super::bodies::{Bodies, Pools, Prepared};
use super::private::{self, BlindedPool};
use super::{LoadgenArgs, LoadgenError, fetch_epoch};
use crate::client::Client;
use crate::protocol::{self, EpochInfo, Format};

/// Which protocol mode the run drives (the name and values of `discover --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Salted fingerprints, `POST /v1/discover`.
    Hashed,
    /// Blinded OPRF elements, `POST /v1/private/evaluate`.
    Private,
}

impl Mode {
    /// The route its requests go to.
    pub(super) fn path(self) -> &'static str {
        match self {
            Mode::Hashed => "/v1/discover",
            Mode::Private => "/v1/private/evaluate",
        }
    }

    /// What one item of a request is called in the report.
    pub(super) fn item(self) -> &'static str {
        match self {
            Mode::Hashed => "fingerprint",
            Mode::Private => "element",
        }
    }

    /// The flag's value, for reports and file headers.
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Hashed => "hashed",
            Mode::Private => "private",
        }
    }
}

/// What a run's bodies are made from, kept for the whole run so that bodies for the next
/// epoch (hashed) or key epoch (private) come from the same material after a 410.
pub(super) enum Workload {
    /// Numbers to fingerprint under each epoch's salt.
    Hashed(Pools),
    /// Elements blinded once (they do not depend on the key epoch).
    Private(BlindedPool),
}

/// What a run starts with.
pub(super) struct Start {
    pub workload: Workload,
    /// Bodies for the server's current (key) epoch.
    pub bodies: Bodies,
    /// The hashed mode's first epoch, which the Redis comparison and the change traffic need
    /// (neither applies to the private mode).
    pub epoch: Option<EpochInfo>,
}

impl Workload {
    /// The material and the first bodies of the run `args` asks for.
    pub async fn start(args: &LoadgenArgs, client: &Client) -> Result<Start, LoadgenError> {
        match args.mode {
            Mode::Hashed => {
                let pools = Pools::generate(args);
                let first = fetch_epoch(client, &args.server).await?;
                let bodies = Bodies::prepare(args, &first, &pools)?;
                Ok(Start {
                    workload: Workload::Hashed(pools),
                    bodies,
                    epoch: Some(first),
                })
            }
            Mode::Private => {
                let (pool, bodies) = private::start(args, client).await?;
                Ok(Start {
                    workload: Workload::Private(pool),
                    bodies,
                    epoch: None,
                })
            }
        }
    }

    /// Bodies for the server's current epoch (`/v1/epoch`) or key epoch (`/v1/private/set`),
    /// fetched as the protocol tells a client to after a 410.
    pub async fn current_bodies(
        &self,
        args: &LoadgenArgs,
        client: &Client,
    ) -> Result<Bodies, LoadgenError> {
        match self {
            Workload::Hashed(pools) => {
                let info = fetch_epoch(client, &args.server).await?;
                Bodies::prepare(args, &info, pools)
            }
            Workload::Private(pool) => {
                let manifest = private::fetch_manifest(client, &args.server).await?;
                Ok(private::prepare(args, &manifest, pool))
            }
        }
    }

    /// What a 200 answer to `sent` says: the registered fingerprints it reports (none in the
    /// private mode, where matching is the client's), or `None` if it does not decode with one
    /// entry per item sent.
    pub fn read_answer(&self, format: Format, body: &[u8], sent: &Prepared) -> Option<u64> {
        match self {
            Workload::Hashed(_) => protocol::decode_answer(format, body, sent.size)
                .ok()
                .map(|answer| answer.registered.len() as u64),
            Workload::Private(_) => private::answer_decodes(format, body, sent.size).then_some(0),
        }
    }
}
