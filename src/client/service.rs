//! `Client`: talks to a contact-discovery server the way the protocol asks a client to.
//!
//! It fetches the epoch and salt, fingerprints numbers, sends them in batches of at most
//! `max_batch` (binary by default), refetches the salt and retries once when the server says the
//! epoch is gone (410), waits out `Retry-After` on 429, and maps each answer back to the numbers.

use std::time::Duration;

use parking_lot::Mutex;

use crate::domain::{E164, Fingerprint, Salt};
use crate::protocol::{self, AnswerError, EpochInfo, ErrorBody, Format};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// Bearer credential from the messaging backend (`None` only for `--insecure-no-auth` servers).
    pub credential: Option<String>,
    /// Request encoding.
    pub format: Format,
    /// Timeout of each HTTP request.
    pub timeout: Duration,
    /// Longest total time to wait out rate limits before giving up.
    pub max_rate_limit_wait: Duration,
}

impl ClientConfig {
    /// Binary encoding, 30 s timeout, up to 10 min of rate-limit waits.
    pub fn new(server: impl Into<String>, credential: Option<String>) -> Self {
        Self {
            server: server.into().trim_end_matches('/').to_owned(),
            credential,
            format: Format::Binary,
            timeout: Duration::from_secs(30),
            max_rate_limit_wait: Duration::from_secs(600),
        }
    }
}

/// Why a discovery run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection failed.
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server refused the request with a documented error.
    #[error("server refused the request ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Human message.
        message: String,
    },
    /// The server answered something the protocol does not allow.
    #[error("unexpected answer from the server: {0}")]
    Protocol(#[from] AnswerError),
    /// Rate limits would take longer to wait out than allowed.
    #[error("rate limited for longer than the allowed wait ({0:?})")]
    RateLimitedTooLong(Duration),
    /// An answer larger than anything the protocol can need: refused before it is read whole,
    /// so a hostile server cannot make the client allocate without bound.
    #[error("the server's {what} is larger than the {limit} bytes it can need")]
    TooLarge {
        /// Which answer.
        what: &'static str,
        /// The most this answer may hold.
        limit: u64,
    },
    /// The private mode's set (manifest, shard or delta) was refused.
    #[error("the server's private set was refused: {0}")]
    Set(#[from] crate::protocol::private_set::SetError),
    /// A blinding or finalising step failed (an evaluated element the client cannot use).
    #[error("OPRF step failed: {0}")]
    Oprf(#[from] crate::domain::oprf::OprfError),
    /// The set manifest is not the documented JSON object.
    #[error("the server's set manifest is not the documented JSON object")]
    ManifestShape,
    /// The set changed on the server at every attempt to sync it.
    #[error("the server's private set kept changing while it was downloaded; try again")]
    SetKeptChanging,
}

/// Progress of a discovery run, reported after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Numbers answered so far.
    pub done: usize,
    /// Numbers in the run.
    pub total: usize,
    /// Batches answered so far.
    pub batches: usize,
}

/// Counters of one run, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Requests sent (including retries).
    pub requests: usize,
    /// Times the epoch was refreshed after a 410.
    pub epoch_refreshes: usize,
    /// Times a 429 was waited out.
    pub rate_limit_waits: usize,
}

struct Epoch {
    number: u64,
    salt: Salt,
    max_batch: usize,
    not_after: std::time::SystemTime,
}

/// A discovery client. Reuse one for many runs: it keeps the connection pool and the epoch.
pub struct Client {
    pub(super) http: reqwest::Client,
    pub(super) config: ClientConfig,
    epoch: Mutex<Option<std::sync::Arc<Epoch>>>,
}

impl Client {
    /// A client for `config`.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("contact-discovery/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            config,
            epoch: Mutex::new(None),
        })
    }

    /// Fetches the current epoch, salt and limits.
    /// Fetches the current epoch, salt and limits, and remembers them for the next batches.
    pub async fn fetch_epoch(&self) -> Result<EpochInfo, ClientError> {
        let info = self.request_epoch().await?;
        self.remember(&info)?;
        Ok(info)
    }

    /// Fetches the epoch object.
    async fn request_epoch(&self) -> Result<EpochInfo, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/epoch", self.config.server))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        Ok(response.json().await?)
    }

    fn remember(&self, info: &EpochInfo) -> Result<std::sync::Arc<Epoch>, ClientError> {
        let epoch = std::sync::Arc::new(Epoch {
            number: info.epoch,
            salt: info.decode_salt()?,
            max_batch: info.checked_max_batch()?,
            not_after: info.decode_not_after()?,
        });
        *self.epoch.lock() = Some(std::sync::Arc::clone(&epoch));
        Ok(epoch)
    }

    async fn current_epoch(&self) -> Result<std::sync::Arc<Epoch>, ClientError> {
        // A cached epoch past its end would earn a 410 round trip: refresh it first.
        let cached = self
            .epoch
            .lock()
            .clone()
            .filter(|e| e.not_after > std::time::SystemTime::now());
        match cached {
            Some(epoch) => Ok(epoch),
            None => {
                let info = self.request_epoch().await?;
                self.remember(&info)
            }
        }
    }

    /// Which of `numbers` belong to registered users: `result[i]` answers `numbers[i]`.
    pub async fn discover(&self, numbers: &[E164]) -> Result<(Vec<bool>, RunStats), ClientError> {
        self.discover_with_progress(numbers, |_| {}).await
    }

    /// Like [`Client::discover`], calling `progress` after every batch.
    pub async fn discover_with_progress(
        &self,
        numbers: &[E164],
        mut progress: impl FnMut(Progress),
    ) -> Result<(Vec<bool>, RunStats), ClientError> {
        let mut registered = vec![false; numbers.len()];
        let mut stats = RunStats::default();
        let mut waited = Duration::ZERO;
        let mut start = 0;
        let mut batches = 0;
        while start < numbers.len() {
            let epoch = self.current_epoch().await?;
            let end = (start + epoch.max_batch).min(numbers.len());
            let hits = self
                .batch(&numbers[start..end], epoch, &mut stats, &mut waited)
                .await?;
            for i in hits {
                registered[start + i] = true;
            }
            start = end;
            batches += 1;
            progress(Progress {
                done: start,
                total: numbers.len(),
                batches,
            });
        }
        Ok((registered, stats))
    }

    /// Sends one batch, retrying once after a 410 and as often as allowed after a 429.
    async fn batch(
        &self,
        numbers: &[E164],
        mut epoch: std::sync::Arc<Epoch>,
        stats: &mut RunStats,
        waited: &mut Duration,
    ) -> Result<Vec<usize>, ClientError> {
        let mut refreshed = false;
        loop {
            // A batch sized for an old epoch may exceed a smaller new limit; the caller re-splits
            // on the next batch, and this one is refused with a clear error rather than lost.
            let fingerprints: Vec<Fingerprint> = numbers
                .iter()
                .map(|n| Fingerprint::compute(&epoch.salt, *n))
                .collect();
            let body = protocol::encode_request(self.config.format, epoch.number, &fingerprints);
            let mut request = self
                .http
                .post(format!("{}/v1/discover", self.config.server))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    self.config.format.content_type(),
                )
                .body(body);
            if let Some(credential) = &self.config.credential {
                request = request.bearer_auth(credential);
            }
            stats.requests += 1;
            let response = request.send().await?;
            match response.status().as_u16() {
                200 => {
                    let bytes = response.bytes().await?;
                    let answer =
                        protocol::decode_answer(self.config.format, &bytes, numbers.len())?;
                    return Ok(answer.registered);
                }
                410 if !refreshed => {
                    let bytes = response.bytes().await?;
                    let info = ErrorBody::decode(&bytes)
                        .and_then(ErrorBody::into_current)
                        .map_err(|_| AnswerError::NoCurrentEpoch)?;
                    epoch = self.remember(&info)?;
                    stats.epoch_refreshes += 1;
                    refreshed = true;
                }
                429 | 503 => {
                    wait_before_retry(&response, waited, self.config.max_rate_limit_wait).await?;
                    stats.rate_limit_waits += 1;
                }
                _ => return Err(refusal(response).await),
            }
        }
    }
}

/// Waits out a 429 or 503 for its `Retry-After` (1 s if it names none), unless the run's
/// total wait `waited` would pass `max`; adds the wait to `waited`.
pub(super) async fn wait_before_retry(
    response: &reqwest::Response,
    waited: &mut Duration,
    max: Duration,
) -> Result<(), ClientError> {
    let wait = retry_after(response).unwrap_or(Duration::from_secs(1));
    if *waited + wait > max {
        return Err(ClientError::RateLimitedTooLong(*waited + wait));
    }
    *waited += wait;
    tokio::time::sleep(wait).await;
    Ok(())
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let secs = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Most bytes of an error body read: documented error bodies are a few hundred bytes.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The error a refusal stands for; an answer that is not a documented error body (or is
/// larger than any error body) reads as code `unknown` with no message.
pub(super) async fn refusal(response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let bytes = read_capped(response, ERROR_BODY_LIMIT, "error body")
        .await
        .unwrap_or_default();
    let (code, message) = match ErrorBody::decode(&bytes) {
        Ok(body) => (body.code, body.message),
        Err(_) => ("unknown".to_owned(), String::new()),
    };
    ClientError::Refused {
        status,
        code,
        message,
    }
}

/// Reads a response body of at most `limit` bytes: refused up front by its `Content-Length`,
/// and while streaming once more arrives (a chunked answer names no length).
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, ClientError> {
    let too_large = || ClientError::TooLarge {
        what,
        limit: limit as u64,
    };
    let declared = response.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(usize::try_from(declared).unwrap_or(limit).min(limit));
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - out.len() {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
