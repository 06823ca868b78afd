//! Sending the load: the open loop (start times fixed by the target rate) or the closed loop
//! (`--max-in-flight` requests back to back), each request resent once under the refetched
//! epoch after a 410, and what the requests record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::LoadgenArgs;
use super::bodies::{Bodies, Prepared};
use super::timeline;
use super::workload::Workload;
use crate::client::Client;
use crate::protocol::Format;

/// The status a 200 is recorded under when its body does not decode with one entry per item
/// sent: a wrong answer, counted as an error like any status but 200.
pub(super) const UNDECODABLE: u16 = 1;

/// Longest latency recorded, in microseconds (10 min).
pub(super) const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram: microseconds from 1 µs to 10 min, three significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant bounds are valid")
}

/// What the request tasks record.
pub(super) struct Tally {
    pub latency: Mutex<Histogram<u64>>,
    /// Requests by HTTP status; 0 for transport errors, [`UNDECODABLE`] for a 200 that did not
    /// decode.
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// Fingerprints (private mode: elements) in the requests answered 200.
    pub items_answered: AtomicU64,
    pub expected_hits: AtomicU64,
    pub matches: AtomicU64,
    /// Per interval of the run (`timeline::interval_of`): latency histogram of requests
    /// scheduled in it. Together they hold every request `latency` holds.
    pub timeline: Mutex<Vec<Histogram<u64>>>,
    /// Requests answered 410 and sent again under the refetched epoch (counted once, by
    /// their final status).
    pub resent_after_410: AtomicU64,
}

impl Tally {
    fn new(duration: Duration) -> Self {
        Self {
            latency: Mutex::new(histogram()),
            statuses: Mutex::new(BTreeMap::new()),
            items_answered: AtomicU64::new(0),
            expected_hits: AtomicU64::new(0),
            matches: AtomicU64::new(0),
            timeline: Mutex::new(
                (0..timeline::intervals_for(duration))
                    .map(|_| histogram())
                    .collect(),
            ),
            resent_after_410: AtomicU64::new(0),
        }
    }

    /// Counts a 200 answer to `sent` that reported `matches` registered fingerprints.
    fn answered(&self, sent: &Prepared, matches: u64) {
        self.items_answered
            .fetch_add(sent.size as u64, Ordering::Relaxed);
        self.expected_hits
            .fetch_add(sent.expected_hits as u64, Ordering::Relaxed);
        self.matches.fetch_add(matches, Ordering::Relaxed);
    }

    /// Requests answered with anything but 200 so far.
    fn errors(&self) -> u64 {
        self.statuses
            .lock()
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, c)| *c)
            .sum()
    }
}

/// What the sending loop measured besides the tally.
pub(super) struct Driven {
    /// Requests started.
    pub scheduled: u64,
    /// Open loop: requests started more than 1 ms after their scheduled time.
    pub late: u64,
    /// Time spent starting requests.
    pub sending: Duration,
    /// Time until the last answer.
    pub elapsed: Duration,
}

/// Everything the request tasks share.
pub(super) struct Load {
    args: LoadgenArgs,
    /// Sends the load's requests (its own pool, sized for `--max-in-flight`).
    http: reqwest::Client,
    /// The library client, for the epoch (or the key epoch) after a 410.
    epochs: Client,
    /// `/v1/discover` or `/v1/private/evaluate`.
    url: String,
    /// `Authorization` header values, used in turn.
    tokens: Vec<String>,
    workload: Workload,
    bodies: RwLock<Arc<Bodies>>,
    /// One refetch at a time; later 410s for the same epoch find it done.
    refetching: tokio::sync::Mutex<()>,
    pub tally: Tally,
    slots: Arc<Semaphore>,
    progress: indicatif::ProgressBar,
    started: Instant,
    /// The wall-clock time of `started`, for the interval log's `StartTime`.
    pub started_at: SystemTime,
}

impl Load {
    /// Ready to send; the run's clock starts now.
    pub fn new(
        args: &LoadgenArgs,
        epochs: Client,
        tokens: Vec<String>,
        workload: Workload,
        bodies: Bodies,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.max_in_flight)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            args: args.clone(),
            http,
            epochs,
            url: format!("{}{}", args.server.trim_end_matches('/'), args.mode.path()),
            tokens,
            workload,
            bodies: RwLock::new(Arc::new(bodies)),
            refetching: tokio::sync::Mutex::new(()),
            tally: Tally::new(args.duration),
            slots: Arc::new(Semaphore::new(args.max_in_flight.max(1))),
            progress: progress_bar(args),
            started: Instant::now(),
            started_at: SystemTime::now(),
        })
    }

    /// The epoch of the bodies in use now.
    pub fn current_epoch(&self) -> u64 {
        self.bodies.read().epoch
    }

    fn current_bodies(&self) -> Arc<Bodies> {
        Arc::clone(&self.bodies.read())
    }

    fn format(&self) -> Format {
        self.args.encoding
    }
}

/// The progress display: a bar over the scheduled requests, or a spinner for the closed loop.
fn progress_bar(args: &LoadgenArgs) -> indicatif::ProgressBar {
    let progress = if args.closed {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::new(total_requests(args))
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} requests {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

/// Requests the open loop schedules; the closed loop runs until the duration is up.
fn total_requests(args: &LoadgenArgs) -> u64 {
    if args.closed {
        u64::MAX
    } else {
        (args.rate * args.duration.as_secs_f64()).round() as u64
    }
}

/// Starts every request and waits for the last answer.
pub(super) async fn drive(load: &Arc<Load>) -> Driven {
    let mut tasks = tokio::task::JoinSet::new();
    let mut late = 0u64;
    let mut scheduled_count = 0u64;
    for k in 0..total_requests(&load.args) {
        let start = if load.args.closed {
            closed_loop_start(load).await
        } else {
            Some(open_loop_start(load, k, &mut late).await)
        };
        let Some((scheduled, permit)) = start else {
            break;
        };
        scheduled_count += 1;
        let bodies = load.current_bodies();
        tasks.spawn(request(Arc::clone(load), k, scheduled, permit, bodies));
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
        if k % 256 == 0 {
            load.progress
                .set_message(format!("{} errors", load.tally.errors()));
        }
    }
    let sending = load.started.elapsed();
    while tasks.join_next().await.is_some() {}
    let elapsed = load.started.elapsed();
    load.progress.finish_and_clear();
    Driven {
        scheduled: scheduled_count,
        late,
        sending,
        elapsed,
    }
}

/// Closed loop: the next request starts as soon as a slot is free, until the duration is up.
async fn closed_loop_start(load: &Load) -> Option<(Instant, Option<OwnedSemaphorePermit>)> {
    let permit = Arc::clone(&load.slots).acquire_owned().await.ok()?;
    if load.started.elapsed() >= load.args.duration {
        return None;
    }
    Some((Instant::now(), Some(permit)))
}

/// Open loop: request `k` is scheduled at `k / rate` from the start, whatever the answers do;
/// one started more than 1 ms behind its time counts as late. The slot is taken in the task,
/// so waiting for one counts as latency.
async fn open_loop_start(
    load: &Load,
    k: u64,
    late: &mut u64,
) -> (Instant, Option<OwnedSemaphorePermit>) {
    let scheduled = load.started + Duration::from_secs_f64(k as f64 / load.args.rate);
    let now = Instant::now();
    if scheduled > now {
        tokio::time::sleep_until(scheduled.into()).await;
    } else if now - scheduled > Duration::from_millis(1) {
        *late += 1;
    }
    (scheduled, None)
}

/// One request task: takes a slot, sends, records.
async fn request(
    load: Arc<Load>,
    k: u64,
    scheduled: Instant,
    permit: Option<OwnedSemaphorePermit>,
    bodies: Arc<Bodies>,
) {
    let _slot = match permit {
        Some(permit) => permit,
        None => match Arc::clone(&load.slots).acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return,
        },
    };
    let status = send_with_resend(&load, k, &bodies).await;
    record(&load, scheduled, status);
}

/// Sends request `k`; on 410 does what the protocol asks of a client: fetches the current
/// epoch (private mode: the manifest's key epoch) and sends the same request again under it,
/// once.
async fn send_with_resend(load: &Load, k: u64, bodies: &Bodies) -> u16 {
    // Requests rotate through the users' credentials; an anonymous run has none.
    let token = load
        .tokens
        .get(k as usize % load.tokens.len().max(1))
        .map(String::as_str);
    let status = send(load, token, &bodies.item(k)).await;
    if status != 410 {
        return status;
    }
    load.tally.resent_after_410.fetch_add(1, Ordering::Relaxed);
    refresh_bodies(load, bodies.epoch).await;
    send(load, token, &load.current_bodies().item(k)).await
}

/// Sends one body; returns the status (0 for a transport error, [`UNDECODABLE`] for a 200
/// that did not decode) and tallies a decoded 200.
async fn send(load: &Load, token: Option<&str>, prepared: &Prepared) -> u16 {
    let mut request = load
        .http
        .post(&load.url)
        .header("content-type", load.format().content_type());
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let sent = request.body(prepared.body.clone()).send().await;
    let Ok(response) = sent else {
        return 0;
    };
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    if status != 200 {
        return status;
    }
    match load.workload.read_answer(load.format(), &body, prepared) {
        Some(matches) => {
            load.tally.answered(prepared, matches);
            status
        }
        None => UNDECODABLE,
    }
}

/// Replaces the bodies of `stale_epoch` with bodies for the current epoch, unless another
/// task already did; on failure the old bodies stay (their requests are answered 410 again).
async fn refresh_bodies(load: &Load, stale_epoch: u64) {
    let _guard = load.refetching.lock().await;
    if load.current_epoch() != stale_epoch {
        return;
    }
    if let Ok(fresh) = load.workload.current_bodies(&load.args, &load.epochs).await {
        *load.bodies.write() = Arc::new(fresh);
    }
}

/// Records one finished request, its latency measured from its scheduled start.
fn record(load: &Load, scheduled: Instant, status: u16) {
    let micros = (scheduled.elapsed().as_micros().max(1) as u64).min(MAX_MICROS);
    let _ = load.tally.latency.lock().record(micros);
    let interval = timeline::interval_of(scheduled.duration_since(load.started));
    // A closed-loop start a hair past the end joins the last interval, so the intervals hold
    // every request the report counts.
    let mut timeline = load.tally.timeline.lock();
    let last = timeline.len().saturating_sub(1);
    if let Some(h) = timeline.get_mut(interval.min(last)) {
        let _ = h.record(micros);
    }
    drop(timeline);
    *load.tally.statuses.lock().entry(status).or_default() += 1;
    load.progress.inc(1);
}
