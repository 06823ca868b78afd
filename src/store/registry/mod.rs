//! The registry: the durable set of registered numbers and whether each is discoverable.
//!
//! On disk it is a snapshot (`registry.snap`, `snapshot.rs`) plus a checksummed append-only log
//! (`registry.log`, `log.rs`, its records in `record.rs`); in memory a compact sorted vector
//! and an overlay of recent changes (`state.rs`). A change is appended as one record and
//! fsync'd before it is applied in memory and acknowledged, so an acknowledged change survives
//! a crash, and readers only ever see durable state. On open, a torn or corrupt log tail is
//! detected by its checksum and truncated to the last good record. [`Registry`] coordinates
//! them under its locks.
//!
//! Nothing long happens under the log lock, which every change takes. Folding the overlay into
//! the sorted vector and compacting the log run on a background thread: under the lock they
//! only freeze the overlay (and rotate the log); the passes over the vector are done in short
//! steps with changes landing between them, and the snapshot is written outside every lock.
//!
//! # Compaction and recovery
//!
//! When the log passes a size (64 MiB), a compaction, under the log lock, links `registry.log`
//! as `registry.log.prev`, renames an empty log over `registry.log`, fsyncs the directory and
//! freezes the overlay: the snapshot point P is that instant, and `registry.log.prev` holds the
//! records up to P since the previous snapshot. Then, without the lock, it folds, writes the
//! snapshot of the state at P (temporary file, fsync, rename, fsync of the directory) and
//! deletes `registry.log.prev`. One compaction runs at a time; if one fails after the rotation,
//! the next writes a snapshot first and deletes `registry.log.prev`, then rotates again.
//!
//! Open replays the snapshot, then `registry.log.prev` if present, then `registry.log`. Why that
//! is right after a crash at any point: every operation sets a number's state absolutely
//! ([`Op`]), so replaying a sequence of operations leaves each number it touches in the state
//! of the last operation on it, whatever the state before. Let the history be the records
//! h1 … hn; the snapshot holds the state after h1 … hs; the log files hold ha … hn, contiguous,
//! in order, with a ≤ s + 1 (a log file is deleted or emptied only once a snapshot holds it).
//! A number touched by ha … hn ends in the state of its last operation there, which is its last
//! operation in the whole history; a number not touched there was not touched after hs either
//! (a ≤ s + 1), so the snapshot's state for it is the final one. Hence records the snapshot
//! already holds (all of `registry.log.prev` once the new snapshot is renamed into place, or
//! both files when the crash fell between the link and the rename) change nothing. The crash
//! points: before the link (old snapshot, old log: the state before); after the link (both
//! names for one file: replayed twice); after the rename (old snapshot, `registry.log.prev`,
//! the new log); after the snapshot's rename (new snapshot, both logs); after the delete (new
//! snapshot, new log). `tests::replaying_logs_a_snapshot_already_holds_changes_nothing` and
//! `tests::a_compaction_stopped_at_any_point_loses_nothing` check them.

mod log;
pub mod record;
mod snapshot;
mod state;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::domain::E164;
use crate::store::atomic_file::AtomicWriteError;
use log::Log;
pub use record::Op;
pub use snapshot::{Snapshot, SnapshotError};
use state::State;
pub use state::{Counts, Discoverability, DiscoverableNumbers, Visibility};

const SNAPSHOT_FILE: &str = "registry.snap";
const LOG_FILE: &str = "registry.log";
/// The log a compaction rotated away, until the snapshot holding it is written.
const PREV_LOG_FILE: &str = "registry.log.prev";
/// The empty log a compaction is about to rotate to.
const NEW_LOG_FILE: &str = "registry.log.new";
const LOCK_FILE: &str = "registry.lock";
/// Fold the log into a snapshot once it is this large.
const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;
/// Fold the in-memory overlay of recent changes into the sorted vector once it holds this many
/// numbers, so the overlay stays small (every build and compaction folds it too). A fold costs
/// two passes over the registry whatever the overlay holds, so a larger threshold means fewer
/// of them: at 5,000 changes/s, one every ~50 s; the overlay's memory bound is in `state.rs`.
const FOLD_OVERLAY_AT: usize = 1 << 18;
/// Entries a fold moves per step, each step under the state lock (~1 ms).
const FOLD_STEP: usize = 1 << 19;
/// How often the background thread looks again while a build holds the sorted vector.
const MAINTENANCE_POLL: Duration = Duration::from_millis(20);
/// How long after a failed compaction the next attempt waits.
const COMPACTION_RETRY: Duration = Duration::from_secs(5);

/// Registry failures. Messages name files, never numbers.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Reading or writing a registry file failed.
    #[error("registry {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The snapshot is damaged. Snapshots are written atomically, so this is a disk fault.
    #[error("registry snapshot {path} is corrupt ({why}); refusing to start")]
    CorruptSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: SnapshotError,
    },
    /// Another process holds the data directory.
    #[error("data directory {path} is in use by another process")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// An earlier write failed half-way and could not be rolled back; writes are refused.
    #[error("registry log is in an unknown state after a failed write; restart to recover")]
    Poisoned,
    /// The data directory could not be created or made private.
    #[error(transparent)]
    DataDir(#[from] crate::domain::secret::KeyFileError),
}

// Errors that reach logs: their messages name files and settings, never numbers.
impl crate::log_safe::LogSafe for RegistryError {}

impl From<AtomicWriteError> for RegistryError {
    fn from(err: AtomicWriteError) -> Self {
        RegistryError::Io {
            path: err.path,
            source: err.source,
        }
    }
}

/// What opening the registry found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Entries read from the snapshot.
    pub snapshot_entries: u64,
    /// Log records replayed from `registry.log`.
    pub log_records: u64,
    /// Log records replayed from `registry.log.prev`, left by a compaction that did not finish.
    pub prev_log_records: u64,
    /// Bytes cut from a torn or corrupt log tail (0 when the log was clean).
    pub truncated_bytes: u64,
}

/// What follows the registry's discoverable set change by change: the live indexes of each
/// protocol mode. The registry calls it for every applied change, in the order it applied
/// them, while it still holds the lock that orders writes; so a sink sees every change exactly
/// once and in order, and a change is in every sink before [`Registry::apply`] returns (what
/// lets the admin API answer "discoverable").
pub trait ChangeSink: Send + Sync {
    /// Numbers that became discoverable or stopped being so, in order. Runs under the
    /// registry's write lock: it must be quick and must not call back into the registry.
    fn discoverability_changed(&self, changes: &[Discoverability]);
    /// The whole registry was replaced (a bulk import, or a replica loading the shared
    /// snapshot): what the sink holds must be rebuilt from [`Registry::discoverable_numbers`].
    fn replaced(&self);
}

/// The durable registry. Cheap to share behind an `Arc`; writes are serialised by the log lock,
/// which is always taken before the state lock. Folding the overlay and compacting the log run
/// on a background thread, one at a time (the maintenance lock, taken before the log lock).
pub struct Registry {
    shared: Arc<Shared>,
    /// The background fold or compaction, if one was started.
    worker: Mutex<Option<JoinHandle<()>>>,
    _lock: File,
}

/// What the registry and its background thread share.
struct Shared {
    dir: PathBuf,
    state: RwLock<State>,
    log: Mutex<Log>,
    /// Held by whoever folds, compacts, replaces or takes a view, for the whole of it: one at
    /// a time, and nobody else takes a reference to the sorted vector meanwhile.
    maintenance: Mutex<()>,
    local_sequence: AtomicU64,
    compact_bytes: AtomicU64,
    sinks: RwLock<Vec<Arc<dyn ChangeSink>>>,
    /// Tells the background thread to stop (the registry is being dropped).
    stop: AtomicBool,
    /// Where compaction stops, as if the process died there (crash tests).
    #[cfg(test)]
    crash_at: parking_lot::Mutex<Option<CrashPoint>>,
}

/// Points inside a compaction where tests stop it, as if the process had died there.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// `registry.log.new` written, nothing renamed.
    Prepared,
    /// `registry.log` rotated to `registry.log.prev`; no new snapshot.
    Rotated,
    /// The new snapshot written; `registry.log.prev` not yet deleted.
    SnapshotWritten,
}

impl Registry {
    /// Opens (or creates) the registry in `dir`, holding an exclusive lock on it: loads the
    /// snapshot, replays `registry.log.prev` (left by a compaction that did not finish) and
    /// then the log over it, and cuts a torn log tail.
    pub fn open(dir: &Path) -> Result<(Self, OpenReport), RegistryError> {
        crate::domain::secret::ensure_private_dir(dir)?;
        let lock = lock_dir(dir)?;
        tighten_registry_files(dir)?;

        let mut report = OpenReport::default();
        let snap_path = dir.join(SNAPSHOT_FILE);
        let mut state = if snap_path.exists() {
            let snapshot = snapshot::read_file(&snap_path)?;
            report.snapshot_entries = snapshot.len() as u64;
            State::from_snapshot(snapshot)
        } else {
            State::default()
        };
        // Replay only: what changed for the sinks is not needed before anyone subscribed.
        let mut replay = |ops: &[Op]| {
            state.apply(ops);
        };
        if let Some(records) = log::replay_prev(dir, &mut replay)? {
            report.prev_log_records = records;
        }
        let (log, replayed) = Log::open(dir, &mut replay)?;
        report.log_records = replayed.records;
        report.truncated_bytes = replayed.truncated_bytes;
        state.fold();

        let shared = Shared {
            dir: dir.to_owned(),
            state: RwLock::new(state),
            log: Mutex::new(log),
            maintenance: Mutex::new(()),
            local_sequence: AtomicU64::new(1),
            compact_bytes: AtomicU64::new(default_compact_bytes()),
            sinks: RwLock::new(Vec::new()),
            stop: AtomicBool::new(false),
            #[cfg(test)]
            crash_at: parking_lot::Mutex::new(None),
        };
        let registry = Self {
            shared: Arc::new(shared),
            worker: Mutex::new(None),
            _lock: lock,
        };
        Ok((registry, report))
    }

    /// Sets the log size at which it is folded into a snapshot (tests use small values).
    pub fn with_compact_bytes(self, bytes: u64) -> Self {
        self.shared.compact_bytes.store(bytes, Ordering::Relaxed);
        self
    }

    /// Durably applies `ops` as one unit and returns the new [local
    /// sequence](Registry::local_sequence). Blocks on fsync: call it from a blocking context.
    /// When it returns `Ok`, the change survives a crash and every [`ChangeSink`] holds it.
    ///
    /// It never waits for a fold or a compaction: those run on a background thread, which this
    /// starts when the overlay or the log has grown past its threshold.
    pub fn apply(&self, ops: &[Op]) -> Result<u64, RegistryError> {
        let shared = &*self.shared;
        let mut log = shared.log.lock();
        log.append(ops)?;
        let (changes, fold_due) = {
            let mut state = shared.state.write();
            let changes = state.apply(ops);
            (changes, state.pending() >= FOLD_OVERLAY_AT)
        };
        if !changes.is_empty() {
            for sink in shared.sinks.read().iter() {
                sink.discoverability_changed(&changes);
            }
        }
        let sequence = shared.local_sequence.fetch_add(1, Ordering::AcqRel) + 1;
        let compact_due = shared.compaction_due(&log);
        drop(log);
        if fold_due || compact_due {
            self.start_maintenance();
        }
        Ok(sequence)
    }

    /// Starts the background thread unless it is running.
    fn start_maintenance(&self) {
        let mut worker = self.worker.lock();
        if worker.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        if let Some(done) = worker.take() {
            let _ = done.join();
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("registry-maintenance".into())
            .spawn(move || shared.maintain())
        {
            Ok(handle) => *worker = Some(handle),
            Err(err) => crate::safe_warn!(
                "registry maintenance thread could not start; retrying on the next change",
                error = err,
            ),
        }
    }

    /// Adds a sink that is told of every change from now on. Subscribe before the first
    /// [`Registry::discoverable_numbers_with`] whose view the sink builds from.
    pub fn subscribe(&self, sink: Arc<dyn ChangeSink>) {
        let _writes = self.shared.log.lock();
        self.shared.sinks.write().push(sink);
    }

    /// Replaces nothing, adds everything: merges `entries` in and writes a fresh snapshot, all or
    /// nothing (the snapshot is renamed into place only once complete).
    pub fn import(&self, entries: &[(E164, Visibility)]) -> Result<u64, RegistryError> {
        self.shared.replace_state(|state| {
            let mut merged = state.clone();
            merged.set_many(entries);
            merged
        })
    }

    /// Makes the registry exactly `snapshot` (as from [`Snapshot::decode`]): a new snapshot is
    /// written and the log emptied, all or nothing. A replica loading the shared snapshot uses
    /// this; everything held before is replaced.
    pub fn replace_all(&self, snapshot: Snapshot) -> Result<u64, RegistryError> {
        self.shared
            .replace_state(|_| State::from_snapshot(snapshot))
    }

    /// Every registration at this moment (shared, not copied), for publishing to replicas.
    pub fn snapshot(&self) -> Snapshot {
        let shared = &*self.shared;
        let _one = shared.maintenance.lock();
        shared.state.write().freeze();
        shared.fold_in_steps(true);
        let state = shared.state.read();
        state
            .folded_snapshot()
            .expect("a fold allowed to copy always finishes")
    }

    /// The directory the registry lives in (and holds locked).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Folds the log into a new snapshot now (and deletes a rotated log left by a compaction
    /// that failed), waiting for a background one to finish first.
    pub fn compact(&self) -> Result<(), RegistryError> {
        let shared = &*self.shared;
        let _one = shared.maintenance.lock();
        // A rotated log left over is first captured by a snapshot; then the log is rotated.
        if !shared.compact(true)? {
            shared.compact(true)?;
        }
        Ok(())
    }

    /// How many changes this process has applied since it opened the registry, plus one: it
    /// restarts at 1 in every process and differs between replicas holding the same numbers,
    /// so it only compares two moments within one process (has anything changed since?).
    pub fn local_sequence(&self) -> u64 {
        self.shared.local_sequence.load(Ordering::Acquire)
    }

    /// All discoverable numbers and the local sequence they reflect (a copy; index builds use
    /// [`Registry::discoverable_numbers`], which does not copy).
    pub fn discoverable(&self) -> (Vec<E164>, u64) {
        let (numbers, sequence) = self.discoverable_numbers();
        let numbers = numbers
            .as_digits()
            .iter()
            .filter_map(|d| E164::from_u64(*d).ok())
            .collect();
        (numbers, sequence)
    }

    /// All discoverable numbers, shared with the registry rather than copied, and the local
    /// sequence they reflect. Folds pending changes first (a linear pass over the registry).
    pub fn discoverable_numbers(&self) -> (DiscoverableNumbers, u64) {
        let (numbers, sequence, ()) = self.discoverable_numbers_with(|| ());
        (numbers, sequence)
    }

    /// Like [`Registry::discoverable_numbers`], and runs `at_this_point` while no change can
    /// land: a sink that starts recording changes there misses none made after the view and
    /// records none the view already holds (how an index built from the view catches up).
    ///
    /// The view is the registry at that point: under the log lock the changes made so far are
    /// frozen (no pass over the registry), and they are folded in after the lock is released,
    /// while later changes land in a fresh overlay. Waits for a background fold or compaction.
    pub fn discoverable_numbers_with<T>(
        &self,
        at_this_point: impl FnOnce() -> T,
    ) -> (DiscoverableNumbers, u64, T) {
        let shared = &*self.shared;
        let _one = shared.maintenance.lock();
        let (sequence, at) = {
            let _writes = shared.log.lock();
            shared.state.write().freeze();
            (self.local_sequence(), at_this_point())
        };
        // Copies the vector only if an earlier view is still held (builds overlapping).
        shared.fold_in_steps(true);
        let numbers = shared
            .state
            .read()
            .folded_discoverable()
            .expect("a fold allowed to copy always finishes");
        (numbers, sequence, at)
    }

    /// The state of one number, if registered.
    pub fn get(&self, number: E164) -> Option<Visibility> {
        self.shared.state.read().get(number)
    }

    /// How many numbers are registered, by visibility.
    pub fn counts(&self) -> Counts {
        self.shared.state.read().counts()
    }

    /// Every registration, sorted by number.
    pub fn entries(&self) -> Vec<(E164, Visibility)> {
        let snapshot = self.snapshot();
        state::entries_of(&snapshot.into_entries())
    }

    /// Flushes the log to disk (every acknowledged write already is; this is for shutdown).
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.shared.log.lock().sync()
    }

    #[cfg(test)]
    fn crash_compaction_at(&self, point: Option<CrashPoint>) {
        *self.shared.crash_at.lock() = point;
    }

    /// Waits for the background thread to finish what it is doing.
    #[cfg(test)]
    fn wait_for_maintenance(&self) {
        if let Some(worker) = self.worker.lock().take() {
            let _ = worker.join();
        }
    }
}

/// The background thread's work is in memory and in files it replaces atomically: it is stopped
/// and waited for, so that nothing writes into the directory once its lock is released.
impl Drop for Registry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(worker) = self.worker.get_mut().take() {
            let _ = worker.join();
        }
    }
}

impl Shared {
    fn compaction_due(&self, log: &Log) -> bool {
        log.len() > self.compact_bytes.load(Ordering::Relaxed) || log.has_prev()
    }

    /// The background thread: compacts the log or folds the overlay while either is due.
    /// Waits (polling) while a build or snapshot write holds the sorted vector, since folding
    /// then would copy it.
    fn maintain(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let one = self.maintenance.lock();
            let compact_due = self.compaction_due(&self.log.lock());
            let fold_due = self.state.read().pending() >= FOLD_OVERLAY_AT;
            if !compact_due && !fold_due {
                return;
            }
            if self.state.read().base_is_shared() {
                drop(one);
                std::thread::sleep(MAINTENANCE_POLL);
                continue;
            }
            if compact_due {
                if let Err(err) = self.compact(false) {
                    drop(one);
                    crate::safe_warn!(
                        "registry compaction failed; the log keeps growing",
                        error = err
                    );
                    // Not again at once: the next change after this pause retries.
                    self.pause(COMPACTION_RETRY);
                    return;
                }
            } else {
                self.state.write().freeze();
                self.fold_in_steps(false);
            }
        }
    }

    /// Sleeps for `pause`, or less if the registry is being dropped.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stop.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(MAINTENANCE_POLL);
        }
    }

    /// Runs the fold in progress to its end (or until it is blocked by a shared vector when
    /// copying is not allowed), one step at a time, taking the state lock for each step only:
    /// readers and writers go between two steps. The caller holds the maintenance lock.
    fn fold_in_steps(&self, copy_if_shared: bool) {
        loop {
            let progress = self.state.write().fold_step(FOLD_STEP, copy_if_shared);
            if progress != state::FoldProgress::More {
                return;
            }
        }
    }

    /// One compaction; the caller holds the maintenance lock. Returns `Ok(false)` when it did
    /// not rotate the log: the sorted vector was shared and copying not allowed, or a rotated
    /// log was left over (this compaction captured it and deleted it; the log is rotated by the
    /// next one).
    ///
    /// Under the log lock it only rotates the log and freezes the overlay (no pass over the
    /// registry): that instant is the snapshot's point, so the snapshot holds every record of
    /// `registry.log.prev` and none of the new log. The fold and the snapshot write (fsync'd as
    /// it goes, renamed into place) happen with appends going on; then `registry.log.prev` is
    /// deleted.
    fn compact(&self, copy_if_shared: bool) -> Result<bool, RegistryError> {
        if !copy_if_shared && self.state.read().base_is_shared() {
            return Ok(false);
        }
        let rotate = !self.log.lock().has_prev();
        if rotate {
            Log::prepare_rotation(&self.dir)?;
            if self.crashed_at(CrashPoint::Prepared) {
                return Ok(true);
            }
        }
        {
            let mut log = self.log.lock();
            if rotate {
                log.rotate(&self.dir)?;
            }
            self.state.write().freeze();
        }
        if self.crashed_at(CrashPoint::Rotated) {
            return Ok(true);
        }
        self.fold_in_steps(copy_if_shared);
        let Some(snapshot) = self.state.read().folded_snapshot() else {
            return Ok(false);
        };
        snapshot::write_file(&self.dir, &snapshot)?;
        drop(snapshot);
        if self.crashed_at(CrashPoint::SnapshotWritten) {
            return Ok(true);
        }
        self.log.lock().remove_prev(&self.dir)?;
        Ok(rotate)
    }

    /// Whether a test asked compaction to stop at `point`, as if the process died there.
    /// The "dead" process does nothing more in the background either.
    #[cfg(test)]
    fn crashed_at(&self, point: CrashPoint) -> bool {
        let crashed = *self.crash_at.lock() == Some(point);
        if crashed {
            self.stop.store(true, Ordering::Release);
        }
        crashed
    }

    #[cfg(not(test))]
    fn crashed_at(&self, _point: CrashPoint) -> bool {
        false
    }

    /// Writes the state `make` builds from the current one (under the log lock, so no change
    /// lands meanwhile) as a new snapshot, empties the log, deletes `registry.log.prev` and
    /// swaps the state in: all or nothing.
    fn replace_state(&self, make: impl FnOnce(&State) -> State) -> Result<u64, RegistryError> {
        let _one = self.maintenance.lock();
        let mut log = self.log.lock();
        log.check_writable()?;
        let mut new = make(&self.state.read());
        snapshot::write_file(&self.dir, &new.snapshot())?;
        log.reset(&self.dir)?;
        *self.state.write() = new;
        let sequence = self.local_sequence.fetch_add(1, Ordering::AcqRel) + 1;
        for sink in self.sinks.read().iter() {
            sink.replaced();
        }
        drop(log);
        Ok(sequence)
    }
}

/// The log size that triggers compaction; test builds take it from
/// `CONTACT_DISCOVERY_TEST_COMPACT_BYTES` if set (`tests/process.rs` kills a server mid-compaction).
fn default_compact_bytes() -> u64 {
    #[cfg(feature = "test-hooks")]
    if let Some(bytes) = std::env::var("CONTACT_DISCOVERY_TEST_COMPACT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return bytes;
    }
    DEFAULT_COMPACT_BYTES
}

/// Takes the data directory's exclusive lock (`registry.lock`), held for the process's life.
fn lock_dir(dir: &Path) -> Result<File, RegistryError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(RegistryError::Locked {
            path: dir.to_owned(),
        });
    }
    Ok(lock)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Removes group and other permissions from the files this module and replication write into
/// the data directory (`registry.*`, `replication.*`: they hold every registered number), in
/// case an older version or an operator's copy left them open. Key files are not touched here:
/// `startup::load_keys` refuses open ones instead.
fn tighten_registry_files(dir: &Path) -> Result<(), RegistryError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("registry.") || name.starts_with("replication.") {
            let path = entry.path();
            crate::domain::secret::tighten_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot::{HIDDEN_BIT, SNAPSHOT_MAGIC};
    use std::fs;

    fn n(text: &str) -> E164 {
        E164::parse(text).unwrap()
    }

    #[test]
    fn changes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            reg.apply(&[Op::Add(n("+15550000001")), Op::Add(n("+15550000002"))])
                .unwrap();
            reg.apply(&[Op::Hide(n("+15550000002")), Op::Remove(n("+15550000001"))])
                .unwrap();
            reg.apply(&[Op::Add(n("+4915100000003"))]).unwrap();
        }
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.log_records, 3);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(reg.get(n("+15550000001")), None);
        assert_eq!(reg.get(n("+15550000002")), Some(Visibility::Hidden));
        assert_eq!(reg.get(n("+4915100000003")), Some(Visibility::Discoverable));
        assert_eq!(
            reg.counts(),
            Counts {
                discoverable: 1,
                hidden: 1
            }
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (_held, _) = Registry::open(dir.path()).unwrap();
        assert!(matches!(
            Registry::open(dir.path()),
            Err(RegistryError::Locked { .. })
        ));
    }

    #[test]
    fn torn_tail_is_truncated_to_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            reg.apply(&[Op::Add(n("+15550000001"))]).unwrap();
            reg.apply(&[Op::Add(n("+15550000002"))]).unwrap();
        }
        let log = dir.path().join(LOG_FILE);
        let full = fs::read(&log).unwrap();
        // Cut the last record in half, then add garbage after a flipped record.
        fs::write(&log, &full[..full.len() - 5]).unwrap();
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.log_records, 1);
        assert!(report.truncated_bytes > 0);
        assert_eq!(reg.get(n("+15550000001")), Some(Visibility::Discoverable));
        assert_eq!(reg.get(n("+15550000002")), None);
        // Appending after a truncation yields a clean log.
        reg.apply(&[Op::Add(n("+15550000003"))]).unwrap();
        drop(reg);
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.log_records, 2);
        assert_eq!(reg.get(n("+15550000003")), Some(Visibility::Discoverable));
    }

    #[test]
    fn corrupt_record_is_detected_by_checksum() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            reg.apply(&[Op::Add(n("+15550000001"))]).unwrap();
            reg.apply(&[Op::Add(n("+15550000002"))]).unwrap();
        }
        let log = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&log, &bytes).unwrap();
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.log_records, 1);
        assert_eq!(reg.get(n("+15550000002")), None);
    }

    #[test]
    fn compaction_and_import_keep_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            let reg = reg.with_compact_bytes(100);
            for i in 0..50u64 {
                reg.apply(&[Op::Add(E164::from_u64(15_550_000_000 + i).unwrap())])
                    .unwrap();
            }
            reg.apply(&[Op::Hide(E164::from_u64(15_550_000_007).unwrap())])
                .unwrap();
            reg.import(&[(n("+447700900123"), Visibility::Discoverable)])
                .unwrap();
            assert!(fs::metadata(dir.path().join(LOG_FILE)).unwrap().len() < 200);
        }
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.snapshot_entries, 51);
        assert_eq!(
            reg.counts(),
            Counts {
                discoverable: 50,
                hidden: 1
            }
        );
        assert_eq!(reg.get(n("+15550000007")), Some(Visibility::Hidden));
    }

    #[test]
    fn corrupt_snapshot_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            reg.import(&[(n("+15550000001"), Visibility::Discoverable)])
                .unwrap();
        }
        let snap = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = fs::read(&snap).unwrap();
        bytes[17] ^= 1;
        fs::write(&snap, &bytes).unwrap();
        assert!(matches!(
            Registry::open(dir.path()),
            Err(RegistryError::CorruptSnapshot { .. })
        ));
    }

    fn number(i: u8) -> E164 {
        E164::from_u64(15_550_000_000 + u64::from(i)).unwrap()
    }

    #[test]
    fn discoverable_numbers_are_a_view_of_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, _) = Registry::open(dir.path()).unwrap();
        reg.apply(&[Op::Add(number(3)), Op::Add(number(1)), Op::Hide(number(2))])
            .unwrap();
        let (numbers, version) = reg.discoverable_numbers();
        assert_eq!(version, reg.local_sequence());
        assert_eq!(numbers.as_digits(), &[number(1).get(), number(3).get()]);
        assert_eq!(reg.discoverable().0, vec![number(1), number(3)]);
        assert_eq!(
            reg.entries(),
            vec![
                (number(1), Visibility::Discoverable),
                (number(2), Visibility::Hidden),
                (number(3), Visibility::Discoverable)
            ]
        );
    }

    #[test]
    fn unsorted_snapshot_is_accepted_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            number(5).get(),
            number(2).get() | HIDDEN_BIT,
            number(1).get(),
        ];
        let mut body = Vec::new();
        body.extend_from_slice(SNAPSHOT_MAGIC);
        body.extend_from_slice(&3u64.to_le_bytes());
        for e in entries {
            body.extend_from_slice(&e.to_le_bytes());
        }
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(SNAPSHOT_FILE), body).unwrap();
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!(report.snapshot_entries, 3);
        assert_eq!(reg.get(number(2)), Some(Visibility::Hidden));
        assert_eq!(reg.discoverable().0, vec![number(1), number(5)]);
    }

    /// Registry files' modes (all 0600) and which of them exist.
    fn registry_files(dir: &Path) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("registry."))
            .map(|e| {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{:?}", e.file_name());
                e.file_name().to_string_lossy().into_owned()
            })
            .collect();
        names.sort();
        names
    }

    fn op_of(kind: u8, i: u8) -> Op {
        match kind {
            0 => Op::Add(number(i)),
            1 => Op::Hide(number(i)),
            _ => Op::Remove(number(i)),
        }
    }

    fn model_of(ops: &[Op]) -> std::collections::BTreeMap<E164, Visibility> {
        let mut model = std::collections::BTreeMap::new();
        for op in ops {
            match *op {
                Op::Add(n) => model.insert(n, Visibility::Discoverable),
                Op::Hide(n) => model.insert(n, Visibility::Hidden),
                Op::Remove(n) => model.remove(&n),
            };
        }
        model
    }

    fn log_file(ops: &[Op]) -> Vec<u8> {
        let mut bytes = record::LOG_MAGIC.to_vec();
        for op in ops {
            bytes.extend(record::encode_record(&[*op]));
        }
        bytes
    }

    proptest::proptest! {
        /// Any files a crash can leave: a snapshot of the history up to s, `registry.log.prev`
        /// with the records a..b and `registry.log` with b.. (a <= s, as no log file is dropped
        /// before a snapshot holds it; s may lie before, inside or after the previous log) open
        /// to exactly the state after the whole history.
        #[test]
        fn replaying_logs_a_snapshot_already_holds_changes_nothing(
            history in proptest::collection::vec((0u8..3, 0u8..12), 0..40),
            cuts in proptest::collection::vec(0usize..=40, 3),
            with_prev: bool,
            with_snapshot: bool,
        ) {
            let ops: Vec<Op> = history.iter().map(|(k, i)| op_of(*k, *i)).collect();
            let len = ops.len();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
            cuts.sort_unstable();
            // a <= b, and the snapshot point s >= a anywhere.
            let (a, b) = if with_prev { (cuts[0], cuts[1]) } else { (cuts[0], cuts[0]) };
            let s = if with_snapshot { cuts[0].max(cuts[2]) } else { 0 };
            let a = if with_snapshot { a } else { 0 };
            let b = b.max(a);
            let dir = tempfile::tempdir().unwrap();
            if with_snapshot {
                let mut state = State::default();
                state.apply(&ops[..s]);
                snapshot::write_file(dir.path(), &state.snapshot()).unwrap();
            }
            if with_prev {
                fs::write(dir.path().join(PREV_LOG_FILE), log_file(&ops[a..b])).unwrap();
            }
            let start = if with_prev { b } else { a };
            fs::write(dir.path().join(LOG_FILE), log_file(&ops[start..])).unwrap();
            let (reg, report) = Registry::open(dir.path()).unwrap();
            proptest::prop_assert_eq!(report.prev_log_records, if with_prev { (b - a) as u64 } else { 0 });
            let want: Vec<(E164, Visibility)> = model_of(&ops).into_iter().collect();
            proptest::prop_assert_eq!(reg.entries(), want);
        }
    }

    /// A compaction stopped at each of its points, as if the process died there, loses
    /// nothing, replays a log the snapshot already holds harmlessly, and the next compaction
    /// cleans up; files stay 0600.
    #[test]
    fn a_compaction_stopped_at_any_point_loses_nothing() {
        let before: Vec<Op> = (0..30u8).map(|i| op_of(i % 3, i % 11)).collect();
        let after: Vec<Op> = (0..20u8).map(|i| op_of((i + 1) % 3, i % 7)).collect();
        let want: Vec<(E164, Visibility)> = model_of(&[before.clone(), after.clone()].concat())
            .into_iter()
            .collect();
        for point in [
            None,
            Some(CrashPoint::Prepared),
            Some(CrashPoint::Rotated),
            Some(CrashPoint::SnapshotWritten),
        ] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (reg, _) = Registry::open(dir.path()).unwrap();
                for op in &before {
                    reg.apply(&[*op]).unwrap();
                }
                reg.crash_compaction_at(point);
                reg.compact().unwrap();
                // Changes made after the compaction's point (during its snapshot write).
                for op in &after {
                    reg.apply(&[*op]).unwrap();
                }
                reg.wait_for_maintenance();
            }
            let files = registry_files(dir.path());
            let prev_left = point.is_some_and(|p| p != CrashPoint::Prepared);
            assert_eq!(
                files.contains(&PREV_LOG_FILE.to_owned()),
                prev_left,
                "{point:?}: {files:?}"
            );
            let (reg, report) = Registry::open(dir.path()).unwrap();
            assert_eq!(reg.entries(), want, "{point:?}");
            assert_eq!(report.truncated_bytes, 0);
            if point == Some(CrashPoint::SnapshotWritten) {
                // The new snapshot holds all of the previous log, replayed again.
                assert_eq!(report.snapshot_entries as usize, model_of(&before).len());
                assert_eq!(report.prev_log_records, before.len() as u64);
            }
            // The next compaction (here in the background, as a change sees the rotated log)
            // captures what is left and deletes it.
            reg.apply(&[Op::Add(number(200))]).unwrap();
            reg.wait_for_maintenance();
            reg.compact().unwrap();
            assert_eq!(
                registry_files(dir.path()),
                vec!["registry.lock", "registry.log", "registry.snap"],
                "{point:?}"
            );
            drop(reg);
            let (reg, report) = Registry::open(dir.path()).unwrap();
            assert_eq!(report.prev_log_records, 0);
            assert_eq!(report.log_records, 0);
            assert_eq!(reg.get(number(200)), Some(Visibility::Discoverable));
            assert_eq!(reg.entries().len(), want.len() + 1);
        }
    }

    /// An import replaces what the log and a previous log say about its numbers: both are
    /// emptied once the new snapshot is in place, so a reopen does not replay older changes
    /// over it.
    #[test]
    fn an_import_is_not_undone_by_replaying_older_logs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            reg.apply(&[Op::Hide(number(1)), Op::Add(number(2))])
                .unwrap();
            // A compaction that stopped after its rotation leaves registry.log.prev behind.
            reg.crash_compaction_at(Some(CrashPoint::Rotated));
            reg.compact().unwrap();
            reg.crash_compaction_at(None);
            reg.apply(&[Op::Remove(number(3))]).unwrap();
            reg.wait_for_maintenance();
        }
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            reg.import(&[
                (number(1), Visibility::Discoverable),
                (number(3), Visibility::Hidden),
            ])
            .unwrap();
            assert_eq!(
                registry_files(dir.path()),
                vec!["registry.lock", "registry.log", "registry.snap"]
            );
        }
        let (reg, report) = Registry::open(dir.path()).unwrap();
        assert_eq!((report.prev_log_records, report.log_records), (0, 0));
        assert_eq!(
            reg.entries(),
            vec![
                (number(1), Visibility::Discoverable),
                (number(2), Visibility::Discoverable),
                (number(3), Visibility::Hidden),
            ]
        );
    }

    /// A previous log that cannot be read is refused (its records might be in no snapshot),
    /// naming the file.
    #[test]
    fn an_unreadable_previous_log_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(PREV_LOG_FILE)).unwrap();
        match Registry::open(dir.path()) {
            Err(err @ RegistryError::Io { .. }) => {
                assert!(err.to_string().contains(PREV_LOG_FILE), "{err}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("opened with an unreadable registry.log.prev"),
        }
    }

    /// With a small threshold, changes compact the log in the background: the log stays short,
    /// nothing is left behind, a view taken meanwhile is the registry at its point, and every
    /// change is there after a reopen.
    #[test]
    fn background_compactions_and_folds_keep_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Vec::new();
        {
            let (reg, _) = Registry::open(dir.path()).unwrap();
            let reg = reg.with_compact_bytes(200);
            for round in 0..200u32 {
                let op = op_of((round % 3) as u8, (round % 23) as u8 + 20);
                reg.apply(&[op]).unwrap();
                model.push(op);
                if round % 50 == 0 {
                    let (numbers, sequence) = reg.discoverable_numbers();
                    assert_eq!(sequence, reg.local_sequence());
                    let want: Vec<u64> = model_of(&model)
                        .into_iter()
                        .filter(|(_, v)| *v == Visibility::Discoverable)
                        .map(|(n, _)| n.get())
                        .collect();
                    assert_eq!(numbers.as_digits(), &want[..]);
                }
            }
            reg.wait_for_maintenance();
            assert!(fs::metadata(dir.path().join(LOG_FILE)).unwrap().len() < 400);
        }
        assert!(!dir.path().join(PREV_LOG_FILE).exists());
        let (reg, _) = Registry::open(dir.path()).unwrap();
        let want: Vec<(E164, Visibility)> = model_of(&model).into_iter().collect();
        assert_eq!(reg.entries(), want);
    }
}
