//! The registry: the durable set of registered numbers and whether each is discoverable.
//!
//! On disk it is a snapshot (`registry.snap`, `snapshot.rs`) plus a checksummed append-only log
//! (`registry.log`, `log.rs`, its records in `record.rs`); in memory a compact sorted vector
//! (`state.rs`). A change is appended as one record and fsync'd before it is applied in memory
//! and acknowledged, so an acknowledged change survives a crash, and readers only ever see
//! durable state. On open, a torn or corrupt log tail is detected by its checksum and truncated
//! to the last good record. When the log grows past a threshold it is folded into a new
//! snapshot (write, fsync, rename). [`Registry`] coordinates the three under its locks.

mod log;
pub mod record;
mod snapshot;
mod state;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
const LOCK_FILE: &str = "registry.lock";
/// Fold the log into a snapshot once it is this large.
const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;
/// Fold the in-memory overlay of recent changes into the sorted vector once it holds this many
/// numbers, so the overlay stays small (the rotation task folds it before every build anyway).
const FOLD_OVERLAY_AT: usize = 1 << 16;

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
    /// Log records replayed.
    pub log_records: u64,
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
/// which is always taken before the state lock.
pub struct Registry {
    dir: PathBuf,
    state: RwLock<State>,
    log: Mutex<Log>,
    local_sequence: AtomicU64,
    compact_bytes: u64,
    sinks: RwLock<Vec<Arc<dyn ChangeSink>>>,
    _lock: File,
}

impl Registry {
    /// Opens (or creates) the registry in `dir`, holding an exclusive lock on it: loads the
    /// snapshot, replays the log over it and cuts a torn log tail.
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
        let (log, replayed) = Log::open(dir, |ops| {
            state.apply(ops);
        })?;
        report.log_records = replayed.records;
        report.truncated_bytes = replayed.truncated_bytes;
        state.fold();

        let registry = Self {
            dir: dir.to_owned(),
            state: RwLock::new(state),
            log: Mutex::new(log),
            local_sequence: AtomicU64::new(1),
            compact_bytes: DEFAULT_COMPACT_BYTES,
            sinks: RwLock::new(Vec::new()),
            _lock: lock,
        };
        Ok((registry, report))
    }

    /// Sets the log size at which it is folded into a snapshot (tests use small values).
    pub fn with_compact_bytes(mut self, bytes: u64) -> Self {
        self.compact_bytes = bytes;
        self
    }

    /// Durably applies `ops` as one unit and returns the new [local
    /// sequence](Registry::local_sequence). Blocks on fsync: call it from a blocking context.
    /// When it returns `Ok`, the change survives a crash and every [`ChangeSink`] holds it.
    pub fn apply(&self, ops: &[Op]) -> Result<u64, RegistryError> {
        let mut log = self.log.lock();
        log.append(ops)?;
        let changes = {
            let mut state = self.state.write();
            let changes = state.apply(ops);
            // Not while an index build reads the vector: folding then would copy all of it.
            if state.pending() > FOLD_OVERLAY_AT && !state.base_is_shared() {
                state.fold();
            }
            changes
        };
        if !changes.is_empty() {
            for sink in self.sinks.read().iter() {
                sink.discoverability_changed(&changes);
            }
        }
        let sequence = self.local_sequence.fetch_add(1, Ordering::AcqRel) + 1;
        // The change itself is durable in the log; a failed fold only means the log stays long
        // until the next attempt.
        if log.len() > self.compact_bytes
            && let Err(err) = self.compact_locked(&mut log)
        {
            crate::safe_warn!(
                "registry compaction failed; the log keeps growing",
                error = err
            );
        }
        drop(log);
        Ok(sequence)
    }

    /// Adds a sink that is told of every change from now on. Subscribe before the first
    /// [`Registry::discoverable_numbers_with`] whose view the sink builds from.
    pub fn subscribe(&self, sink: Arc<dyn ChangeSink>) {
        let _writes = self.log.lock();
        self.sinks.write().push(sink);
    }

    /// Replaces nothing, adds everything: merges `entries` in and writes a fresh snapshot, all or
    /// nothing (the snapshot is renamed into place only once complete).
    pub fn import(&self, entries: &[(E164, Visibility)]) -> Result<u64, RegistryError> {
        self.replace_state(|| {
            let mut merged = self.state.read().clone();
            merged.set_many(entries);
            merged
        })
    }

    /// Makes the registry exactly `snapshot` (as from [`Snapshot::decode`]): a new snapshot is
    /// written and the log emptied, all or nothing. A replica loading the shared snapshot uses
    /// this; everything held before is replaced.
    pub fn replace_all(&self, snapshot: Snapshot) -> Result<u64, RegistryError> {
        self.replace_state(|| State::from_snapshot(snapshot))
    }

    /// Writes the state `make` builds (under the log lock, so no change lands meanwhile) as a
    /// new snapshot, empties the log and swaps it in: all or nothing.
    fn replace_state(&self, make: impl FnOnce() -> State) -> Result<u64, RegistryError> {
        let mut log = self.log.lock();
        log.check_writable()?;
        let mut new = make();
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

    /// Every registration at this moment (shared, not copied), for publishing to replicas.
    pub fn snapshot(&self) -> Snapshot {
        self.state.write().snapshot()
    }

    /// The directory the registry lives in (and holds locked).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Folds the log into a new snapshot now.
    pub fn compact(&self) -> Result<(), RegistryError> {
        let mut log = self.log.lock();
        self.compact_locked(&mut log)
    }

    fn compact_locked(&self, log: &mut Log) -> Result<(), RegistryError> {
        // Holding the log lock, no change can land between the fold and the write, so the
        // shared vector is exactly the state the snapshot must hold; readers are not blocked.
        let snapshot = self.state.write().snapshot();
        snapshot::write_file(&self.dir, &snapshot)?;
        log.reset(&self.dir)
    }

    /// How many changes this process has applied since it opened the registry, plus one: it
    /// restarts at 1 in every process and differs between replicas holding the same numbers,
    /// so it only compares two moments within one process (has anything changed since?).
    pub fn local_sequence(&self) -> u64 {
        self.local_sequence.load(Ordering::Acquire)
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
    pub fn discoverable_numbers_with<T>(
        &self,
        at_this_point: impl FnOnce() -> T,
    ) -> (DiscoverableNumbers, u64, T) {
        let _writes = self.log.lock();
        let numbers = self.state.write().discoverable_numbers();
        (numbers, self.local_sequence(), at_this_point())
    }

    /// The state of one number, if registered.
    pub fn get(&self, number: E164) -> Option<Visibility> {
        self.state.read().get(number)
    }

    /// How many numbers are registered, by visibility.
    pub fn counts(&self) -> Counts {
        self.state.read().counts()
    }

    /// Every registration, sorted by number.
    pub fn entries(&self) -> Vec<(E164, Visibility)> {
        self.state.write().entries()
    }

    /// Flushes the log to disk (every acknowledged write already is; this is for shutdown).
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.log.lock().sync()
    }
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
}
