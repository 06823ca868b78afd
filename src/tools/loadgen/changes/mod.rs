//! Registry changes while the discovery load runs, and how long each takes to become visible.
//!
//! Admin requests (`POST /admin/v1/registrations`) are scheduled at `--change-rate` changes a
//! second from the start of the run, open loop like the discovery requests, each carrying
//! `--changes-per-request` numbers drawn by the [`Ledger`]. Once a request is acknowledged
//! (200 or 202), its numbers go to the *poller*: one library [`Client`] with its own
//! credential, asking `/v1/discover` back to back (one request in flight, every unconfirmed
//! number in one batch, capped at the server's `max_batch`) until each number shows its
//! expected state, or `--visible-timeout` has passed since its request was scheduled ("never
//! visible"). At most `--admin-max-in-flight` admin requests are in flight (the server caps
//! connections per address); waiting for a slot counts as latency, as for discovery requests.
//! The poller's requests are its own: they never count in the discovery figures, and the
//! change traffic runs on its own thread and runtime ([`ChangeThread`]) so the back-to-back
//! poller does not delay the discovery schedule.

mod ledger;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, Semaphore, oneshot};

use super::drive::{MAX_MICROS, histogram};
use super::report::{percentiles, status_name};
use super::{LoadgenArgs, LoadgenError};
use crate::client::{Client, ClientConfig};
use crate::domain::E164;
use crate::domain::secret;
use crate::protocol::EpochInfo;
use crate::tools::generate;
pub use ledger::ChangeMix;
use ledger::{Change, Kind, Ledger};

/// The admin listener the server binds by default (`serve --admin-listen`).
pub const DEFAULT_ADMIN_SERVER: &str = "http://127.0.0.1:9090";

/// Settings of the change traffic (`loadgen --change-rate ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeArgs {
    /// Registry changes (numbers added, removed or hidden) per second, sent to the admin
    /// listener while the discovery load runs; open loop, scheduled from the start. 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub change_rate: f64,
    /// Numbers per admin request (requests go out at change-rate / this per second).
    #[arg(long, default_value_t = 1)]
    pub changes_per_request: usize,
    /// Weights of adds, removes and hides, `ADD:REMOVE:HIDE`. An add of a number this run hid
    /// is an unhide.
    #[arg(long, default_value = "2:1:1")]
    pub change_mix: ChangeMix,
    /// Admin listener base URL.
    #[arg(long, default_value = DEFAULT_ADMIN_SERVER)]
    pub admin_server: String,
    /// Admin bearer token file (overrides DATA_DIR/admin.token, which `serve` generates).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// A change not seen in its expected state this long after its request was scheduled
    /// counts as never visible.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub visible_timeout: Duration,
    /// Most admin requests in flight; later ones wait, and the wait counts as latency.
    #[arg(long, default_value_t = 16)]
    pub admin_max_in_flight: usize,
}

impl Default for ChangeArgs {
    /// No change traffic.
    fn default() -> Self {
        Self {
            change_rate: 0.0,
            changes_per_request: 1,
            change_mix: ChangeMix::default(),
            admin_server: DEFAULT_ADMIN_SERVER.to_owned(),
            admin_token_file: None,
            visible_timeout: Duration::from_secs(10),
            admin_max_in_flight: 16,
        }
    }
}

impl ChangeArgs {
    /// Whether the run sends changes at all.
    pub fn enabled(&self) -> bool {
        self.change_rate > 0.0
    }

    /// Refuses settings the change traffic cannot use.
    pub(super) fn validate(&self) -> Result<(), LoadgenError> {
        let invalid = |m: &str| Err(LoadgenError::Invalid(m.to_owned()));
        if !(self.change_rate >= 0.0 && self.change_rate.is_finite()) {
            return invalid("--change-rate must be 0 or positive");
        }
        if self.changes_per_request == 0 {
            return invalid("--changes-per-request must be positive");
        }
        if self.visible_timeout.is_zero() {
            return invalid("--visible-timeout must be positive");
        }
        if self.admin_max_in_flight == 0 {
            return invalid("--admin-max-in-flight must be positive");
        }
        Ok(())
    }

    /// Admin requests the run schedules.
    fn requests(&self, duration: Duration) -> u64 {
        let requests = self.change_rate * duration.as_secs_f64() / self.changes_per_request as f64;
        (requests.round() as u64).max(1)
    }
}

/// A prepared change run: numbers screened, credentials read, clients built.
pub(super) struct ChangeRun {
    args: ChangeArgs,
    requests: u64,
    interval: Duration,
    registrations_url: String,
    admin_token: String,
    admin: reqwest::Client,
    admin_slots: Semaphore,
    poller: Client,
    max_batch: usize,
    ledger: Mutex<Ledger>,
    /// Acknowledged changes not yet seen in their expected state, oldest first.
    pending: Mutex<Vec<Pending>>,
    woken: Notify,
    sending_done: AtomicBool,
    tally: Tally,
    /// Numbers dropped by the screening because the server did not have them in the state
    /// the generator assumed (e.g. changed by an earlier run).
    screened_out: u64,
}

/// An acknowledged change the poller waits for.
#[derive(Clone, Copy)]
struct Pending {
    change: Change,
    /// When its admin request was scheduled.
    sent: Instant,
}

/// What the change traffic records.
struct Tally {
    admin_latency: Mutex<Histogram<u64>>,
    visible_latency: Mutex<Histogram<u64>>,
    /// Admin requests by HTTP status; 0 for transport errors.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Numbers sent, by kind.
    kinds: Mutex<BTreeMap<Kind, u64>>,
    sent: AtomicU64,
    acknowledged: AtomicU64,
    visible: AtomicU64,
    never_visible: AtomicU64,
    late: AtomicU64,
    /// Scheduled requests with no number left to change.
    empty: AtomicU64,
    poll_requests: AtomicU64,
    poll_errors: AtomicU64,
}

impl Tally {
    fn new() -> Self {
        Self {
            admin_latency: Mutex::new(histogram()),
            visible_latency: Mutex::new(histogram()),
            statuses: Mutex::new(BTreeMap::new()),
            kinds: Mutex::new(BTreeMap::new()),
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            visible: AtomicU64::new(0),
            never_visible: AtomicU64::new(0),
            late: AtomicU64::new(0),
            empty: AtomicU64::new(0),
            poll_requests: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
        }
    }
}

fn record_micros(histogram: &Mutex<Histogram<u64>>, elapsed: Duration) {
    let micros = (elapsed.as_micros().max(1) as u64).min(MAX_MICROS);
    let _ = histogram.lock().record(micros);
}

impl ChangeRun {
    /// Reads the admin token, builds the poller (credential minted with `credential`), and
    /// draws the numbers: adds from another seed of the generator, removes and hides from the
    /// generated registry (past the discovery hits when it is large enough), each screened
    /// with the server so an add really adds and a remove really removes.
    pub async fn prepare(
        args: &LoadgenArgs,
        first: &EpochInfo,
        credential: Option<String>,
    ) -> Result<Self, LoadgenError> {
        let changes = args.changes.clone();
        let token_path = changes
            .admin_token_file
            .clone()
            .unwrap_or_else(|| args.data_dir.join("admin.token"));
        let admin_token = secret::read_token_file(&token_path)?;
        let mut config = ClientConfig::new(args.server.clone(), credential);
        config.format = args.encoding;
        config.timeout = Duration::from_secs(60);
        // A poller held up by rate limits longer than a change may take is of no use.
        config.max_rate_limit_wait = changes.visible_timeout;
        let poller = Client::new(config).map_err(|e| LoadgenError::Invalid(e.to_string()))?;
        let admin = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| LoadgenError::Invalid(e.to_string()))?;
        let requests = changes.requests(args.duration);
        let numbers = (requests as usize).saturating_mul(changes.changes_per_request);
        let (fresh, registered) = candidates(args, numbers);
        let candidates = fresh.len() + registered.len();
        let fresh = screen(&poller, &args.server, fresh, false).await?;
        let registered = screen(&poller, &args.server, registered, true).await?;
        let screened_out = (candidates - fresh.len() - registered.len()) as u64;
        let ledger = Ledger::new(
            changes.change_mix,
            fresh,
            registered,
            args.registry_seed ^ 0xc4a6_e5ed,
        );
        let per_request = changes.changes_per_request as f64;
        Ok(Self {
            interval: Duration::from_secs_f64(per_request / changes.change_rate),
            registrations_url: format!(
                "{}/admin/v1/registrations",
                changes.admin_server.trim_end_matches('/')
            ),
            admin_slots: Semaphore::new(changes.admin_max_in_flight),
            args: changes,
            requests,
            admin_token,
            admin,
            poller,
            max_batch: first.max_batch.max(1),
            ledger: Mutex::new(ledger),
            pending: Mutex::new(Vec::new()),
            woken: Notify::new(),
            sending_done: AtomicBool::new(false),
            tally: Tally::new(),
            screened_out,
        })
    }

    /// Sends every scheduled change and polls until each is visible or timed out.
    pub async fn run(self: Arc<Self>) -> ChangesSummary {
        let poller = tokio::spawn(Arc::clone(&self).poll());
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..self.requests {
            let scheduled = started + self.interval.mul_f64(k as f64);
            let now = Instant::now();
            if scheduled > now {
                tokio::time::sleep_until(scheduled.into()).await;
            } else if now - scheduled > Duration::from_millis(1) {
                self.tally.late.fetch_add(1, Ordering::Relaxed);
            }
            tasks.spawn(Arc::clone(&self).send(scheduled));
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        self.sending_done.store(true, Ordering::Release);
        self.woken.notify_one();
        let _ = poller.await;
        self.summary()
    }

    /// One admin request: waits for a slot, picks its numbers, sends, hands acknowledged ones
    /// to the poller.
    async fn send(self: Arc<Self>, scheduled: Instant) {
        let Ok(_slot) = self.admin_slots.acquire().await else {
            return;
        };
        let picked = self.ledger.lock().pick(self.args.changes_per_request);
        if picked.is_empty() {
            self.tally.empty.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.tally
            .sent
            .fetch_add(picked.len() as u64, Ordering::Relaxed);
        {
            let mut kinds = self.tally.kinds.lock();
            for change in &picked {
                *kinds.entry(change.kind).or_default() += 1;
            }
        }
        let answer = self
            .admin
            .post(&self.registrations_url)
            .bearer_auth(&self.admin_token)
            .json(&request_body(&picked))
            .send()
            .await;
        let status = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        };
        record_micros(&self.tally.admin_latency, scheduled.elapsed());
        *self.tally.statuses.lock().entry(status).or_default() += 1;
        if matches!(status, 200 | 202) {
            self.tally
                .acknowledged
                .fetch_add(picked.len() as u64, Ordering::Relaxed);
            self.pending
                .lock()
                .extend(picked.into_iter().map(|change| Pending {
                    change,
                    sent: scheduled,
                }));
            self.woken.notify_one();
        } else {
            // Refused or failed: whether it was applied is unknown, so its numbers are retired.
            let mut ledger = self.ledger.lock();
            for change in picked {
                ledger.abandon(change);
            }
        }
    }

    /// The poller: one discovery request at a time over the oldest unconfirmed changes, until
    /// sending is over and nothing is pending.
    async fn poll(self: Arc<Self>) {
        loop {
            let batch: Vec<Pending> = {
                let pending = self.pending.lock();
                pending.iter().take(self.max_batch).copied().collect()
            };
            if batch.is_empty() {
                if self.sending_done.load(Ordering::Acquire) {
                    return;
                }
                // Woken by an acknowledgement or the end of sending; the timeout covers a
                // notification that raced the check above.
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), self.woken.notified()).await;
                continue;
            }
            let numbers: Vec<E164> = batch.iter().map(|p| p.change.number).collect();
            match self.poller.discover(&numbers).await {
                Ok((registered, stats)) => {
                    self.tally
                        .poll_requests
                        .fetch_add(stats.requests as u64, Ordering::Relaxed);
                    let seen = Instant::now();
                    let confirmed: Vec<Pending> = {
                        let ledger = self.ledger.lock();
                        batch
                            .iter()
                            .zip(&registered)
                            .filter(|(p, answer)| {
                                ledger
                                    .expected(p.change.number)
                                    .is_some_and(|e| e.discoverable() == **answer)
                            })
                            .map(|(p, _)| *p)
                            .collect()
                    };
                    self.confirm(&confirmed, seen);
                }
                Err(_) => {
                    self.tally.poll_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            self.expire();
        }
    }

    /// Records the changes seen in their expected state at `seen` and settles their numbers.
    fn confirm(&self, confirmed: &[Pending], seen: Instant) {
        if confirmed.is_empty() {
            return;
        }
        let done: std::collections::HashSet<E164> =
            confirmed.iter().map(|p| p.change.number).collect();
        self.pending
            .lock()
            .retain(|p| !done.contains(&p.change.number));
        let mut ledger = self.ledger.lock();
        for p in confirmed {
            record_micros(&self.tally.visible_latency, seen.duration_since(p.sent));
            ledger.settle(p.change);
        }
        self.tally
            .visible
            .fetch_add(confirmed.len() as u64, Ordering::Relaxed);
    }

    /// Gives up on pending changes older than the timeout: never visible.
    fn expire(&self) {
        let timeout = self.args.visible_timeout;
        let mut expired = Vec::new();
        self.pending.lock().retain(|p| {
            let late = p.sent.elapsed() > timeout;
            if late {
                expired.push(p.change);
            }
            !late
        });
        if expired.is_empty() {
            return;
        }
        self.tally
            .never_visible
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        let mut ledger = self.ledger.lock();
        for change in expired {
            ledger.abandon(change);
        }
    }

    fn summary(&self) -> ChangesSummary {
        let t = &self.tally;
        ChangesSummary {
            args: self.args.clone(),
            requests: self.requests,
            late: t.late.load(Ordering::Relaxed),
            empty: t.empty.load(Ordering::Relaxed),
            statuses: t.statuses.lock().clone(),
            kinds: t.kinds.lock().clone(),
            sent: t.sent.load(Ordering::Relaxed),
            acknowledged: t.acknowledged.load(Ordering::Relaxed),
            visible: t.visible.load(Ordering::Relaxed),
            never_visible: t.never_visible.load(Ordering::Relaxed),
            still_pending: self.pending.lock().len() as u64,
            admin_latency: t.admin_latency.lock().clone(),
            visible_latency: t.visible_latency.lock().clone(),
            poll_requests: t.poll_requests.load(Ordering::Relaxed),
            poll_errors: t.poll_errors.load(Ordering::Relaxed),
            screened_out: self.screened_out,
        }
    }
}

/// The change traffic on a thread of its own, prepared and waiting for [`ChangeThread::run`].
pub(super) struct ChangeThread {
    start: oneshot::Sender<()>,
    done: oneshot::Receiver<ChangesSummary>,
}

impl ChangeThread {
    /// Starts the thread and prepares the run on it ([`ChangeRun::prepare`]); returns once it is
    /// ready to start.
    pub async fn spawn(
        args: &LoadgenArgs,
        first: &EpochInfo,
        credential: Option<String>,
    ) -> Result<Self, LoadgenError> {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), LoadgenError>>();
        let (start, start_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadgenError::Invalid(format!("starting the change runtime: {e}")))?;
        let (args, first) = (args.clone(), first.clone());
        std::thread::Builder::new()
            .name("loadgen-changes".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let run = match ChangeRun::prepare(&args, &first, credential).await {
                        Ok(run) => Arc::new(run),
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                            return;
                        }
                    };
                    if ready_tx.send(Ok(())).is_err() || start_rx.await.is_err() {
                        return;
                    }
                    let _ = done_tx.send(run.run().await);
                });
            })
            .map_err(|e| LoadgenError::Invalid(format!("starting the change thread: {e}")))?;
        ready_rx.await.map_err(|_| stopped())??;
        Ok(Self { start, done })
    }

    /// Runs the change traffic (its clock starts now) and returns what it measured.
    pub async fn run(self) -> Result<ChangesSummary, LoadgenError> {
        self.start.send(()).map_err(|()| stopped())?;
        self.done.await.map_err(|_| stopped())
    }
}

fn stopped() -> LoadgenError {
    LoadgenError::Invalid("the change traffic's thread stopped unexpectedly".into())
}

/// `{"add": [...], "remove": [...], "hide": [...]}` for `changes`.
fn request_body(changes: &[Change]) -> serde_json::Value {
    let list = |field: &str| -> Vec<String> {
        changes
            .iter()
            .filter(|c| c.kind.field() == field)
            .map(|c| c.number.to_string())
            .collect()
    };
    json!({ "add": list("add"), "remove": list("remove"), "hide": list("hide") })
}

/// Candidates for `numbers` changes: fresh numbers from another seed of the generator, and
/// registered ones from the generated registry, past the discovery hits when the registry is
/// large enough (else its last numbers, which the discovery load also asks about).
fn candidates(args: &LoadgenArgs, numbers: usize) -> (Vec<E164>, Vec<E164>) {
    let fresh_seed = args.registry_seed.wrapping_add(0x00c4_a6e5);
    let fresh = generate::numbers(numbers.max(1), fresh_seed);
    let size = args.registry_size;
    let hits = args.pool.min(size);
    let wanted = numbers.min(size);
    let start = if hits + wanted <= size {
        hits
    } else {
        size - wanted
    };
    let registered = generate::numbers(start + wanted, args.registry_seed).split_off(start);
    (fresh, registered)
}

/// The numbers of `numbers` the server reports as `discoverable` (or not), asked in batches
/// by the poller's client before the run starts.
async fn screen(
    client: &Client,
    server: &str,
    numbers: Vec<E164>,
    discoverable: bool,
) -> Result<Vec<E164>, LoadgenError> {
    let (registered, _) = client
        .discover(&numbers)
        .await
        .map_err(|e| LoadgenError::Epoch {
            url: format!("{}/v1/discover", server.trim_end_matches('/')),
            why: e.to_string(),
        })?;
    Ok(numbers
        .into_iter()
        .zip(registered)
        .filter(|(_, answer)| *answer == discoverable)
        .map(|(n, _)| n)
        .collect())
}

/// What the change traffic measured.
pub(super) struct ChangesSummary {
    args: ChangeArgs,
    requests: u64,
    late: u64,
    empty: u64,
    statuses: BTreeMap<u16, u64>,
    kinds: BTreeMap<Kind, u64>,
    sent: u64,
    acknowledged: u64,
    visible: u64,
    never_visible: u64,
    still_pending: u64,
    admin_latency: Histogram<u64>,
    visible_latency: Histogram<u64>,
    poll_requests: u64,
    poll_errors: u64,
    screened_out: u64,
}

impl ChangesSummary {
    /// The report's `changes` object.
    pub fn to_json(&self) -> serde_json::Value {
        let count = |s: u16| self.statuses.get(&s).copied().unwrap_or(0);
        let answered: u64 = self.statuses.values().sum();
        let statuses: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .map(|(s, c)| (status_name(*s), *c))
            .collect();
        let kinds: BTreeMap<&str, u64> = Kind::ALL
            .iter()
            .map(|k| (k.name(), self.kinds.get(k).copied().unwrap_or(0)))
            .collect();
        json!({
            "rate": self.args.change_rate,
            "per_request": self.args.changes_per_request,
            "mix": self.args.change_mix.to_string(),
            "admin_server": self.args.admin_server,
            "visible_timeout_s": self.args.visible_timeout.as_secs_f64(),
            "admin_max_in_flight": self.args.admin_max_in_flight,
            "requests": self.requests,
            "requests_empty": self.empty,
            "late_starts": self.late,
            "admin_statuses": statuses,
            "applied_200": count(200),
            "accepted_202": count(202),
            "admin_errors": answered - count(200) - count(202),
            "sent": self.sent,
            "kinds": kinds,
            "acknowledged": self.acknowledged,
            "visible": self.visible,
            "never_visible": self.never_visible + self.still_pending,
            "admin_latency_ms": percentiles(&self.admin_latency),
            "visible_latency_ms": percentiles(&self.visible_latency),
            "poll_requests": self.poll_requests,
            "poll_errors": self.poll_errors,
            "screened_out": self.screened_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_admin_server_is_where_serve_listens() {
        let admin = crate::server::config::Listeners::default().admin_listen;
        assert_eq!(DEFAULT_ADMIN_SERVER, format!("http://{admin}"));
    }

    #[test]
    fn a_request_body_puts_unhides_with_adds() {
        let n = |i: u64| E164::from_u64(15_550_000_000 + i).unwrap();
        let body = request_body(&[
            Change {
                number: n(1),
                kind: Kind::Add,
            },
            Change {
                number: n(2),
                kind: Kind::Unhide,
            },
            Change {
                number: n(3),
                kind: Kind::Remove,
            },
            Change {
                number: n(4),
                kind: Kind::Hide,
            },
        ]);
        assert_eq!(
            body,
            json!({
                "add": ["+15550000001", "+15550000002"],
                "remove": ["+15550000003"],
                "hide": ["+15550000004"],
            })
        );
    }

    #[test]
    fn requests_follow_rate_per_request_and_duration() {
        let mut args = ChangeArgs {
            change_rate: 50.0,
            ..ChangeArgs::default()
        };
        assert_eq!(args.requests(Duration::from_secs(2)), 100);
        args.changes_per_request = 10;
        assert_eq!(args.requests(Duration::from_secs(2)), 10);
        args.change_rate = 0.1;
        assert_eq!(args.requests(Duration::from_secs(1)), 1, "at least one");
        assert!(args.validate().is_ok());
        args.changes_per_request = 0;
        assert!(args.validate().is_err());
        args.changes_per_request = 1;
        args.change_rate = f64::NAN;
        assert!(args.validate().is_err());
    }
}
