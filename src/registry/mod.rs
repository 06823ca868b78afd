//! The registry: the durable set of registered numbers and whether each is discoverable.
//!
//! On disk it is a snapshot (`registry.snap`) plus a checksummed append-only log (`registry.log`).
//! A change is appended as one record and fsync'd before it is applied in memory and acknowledged,
//! so an acknowledged change survives a crash, and readers only ever see durable state. On open,
//! a torn or corrupt log tail is detected by its checksum and truncated to the last good record.
//! When the log grows past a threshold it is folded into a new snapshot (write, fsync, rename).

pub mod generate;
pub mod record;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::domain::E164;
pub use record::Op;
use record::{HIDDEN_BIT, LOG_MAGIC, SNAPSHOT_MAGIC, decode_record, encode_record};

const SNAPSHOT_FILE: &str = "registry.snap";
const LOG_FILE: &str = "registry.log";
const LOCK_FILE: &str = "registry.lock";
/// Fold the log into a snapshot once it is this large.
const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;

/// Whether a registered number can be found by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Matches discovery requests.
    Discoverable,
    /// Registered, but opted out of being found by number.
    Hidden,
}

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
        why: &'static str,
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

/// Counts of registered numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Registered and discoverable.
    pub discoverable: u64,
    /// Registered and hidden.
    pub hidden: u64,
}

struct LogWriter {
    file: File,
    len: u64,
    poisoned: bool,
}

/// The durable registry. Cheap to share behind an `Arc`; writes are serialised.
pub struct Registry {
    dir: PathBuf,
    state: RwLock<HashMap<E164, Visibility>>,
    log: Mutex<LogWriter>,
    version: AtomicU64,
    compact_bytes: u64,
    changed: Arc<tokio::sync::Notify>,
    _lock: File,
}

impl Registry {
    /// Opens (or creates) the registry in `dir`, holding an exclusive lock on it.
    pub fn open(dir: &Path) -> Result<(Self, OpenReport), RegistryError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(RegistryError::Locked {
                path: dir.to_owned(),
            });
        }

        let mut report = OpenReport::default();
        let mut state = HashMap::new();
        let snap_path = dir.join(SNAPSHOT_FILE);
        if snap_path.exists() {
            report.snapshot_entries = read_snapshot(&snap_path, &mut state)?;
        }

        let log_path = dir.join(LOG_FILE);
        if !log_path.exists() {
            create_empty_log(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&log_path))?;
        let mut good = LOG_MAGIC.len();
        if bytes.len() < good || &bytes[..good] != LOG_MAGIC {
            // A log without its header was torn while being created: nothing in it was ever
            // acknowledged, so start it afresh.
            good = 0;
        } else {
            while good < bytes.len() {
                match decode_record(&bytes[good..]) {
                    Ok((ops, used)) => {
                        apply_ops(&mut state, &ops);
                        good += used;
                        report.log_records += 1;
                    }
                    Err(why) => {
                        tracing::warn!(
                            file = %log_path.display(),
                            offset = good,
                            dropped_bytes = bytes.len() - good,
                            reason = %why,
                            "registry log tail is torn or corrupt; truncating to the last good record"
                        );
                        break;
                    }
                }
            }
        }
        report.truncated_bytes = (bytes.len() - good) as u64;
        if good == 0 {
            file.set_len(0).map_err(io(&log_path))?;
            file.seek(SeekFrom::Start(0)).map_err(io(&log_path))?;
            file.write_all(LOG_MAGIC).map_err(io(&log_path))?;
            file.sync_all().map_err(io(&log_path))?;
            good = LOG_MAGIC.len();
        } else if report.truncated_bytes > 0 {
            file.set_len(good as u64).map_err(io(&log_path))?;
            file.sync_all().map_err(io(&log_path))?;
        }
        file.seek(SeekFrom::Start(good as u64))
            .map_err(io(&log_path))?;

        let registry = Self {
            dir: dir.to_owned(),
            state: RwLock::new(state),
            log: Mutex::new(LogWriter {
                file,
                len: good as u64,
                poisoned: false,
            }),
            version: AtomicU64::new(1),
            compact_bytes: DEFAULT_COMPACT_BYTES,
            changed: Arc::new(tokio::sync::Notify::new()),
            _lock: lock,
        };
        Ok((registry, report))
    }

    /// Sets the log size at which it is folded into a snapshot (tests use small values).
    pub fn with_compact_bytes(mut self, bytes: u64) -> Self {
        self.compact_bytes = bytes;
        self
    }

    /// Durably applies `ops` as one unit and returns the new version. Blocks on fsync: call it
    /// from a blocking context. When it returns `Ok`, the change survives a crash.
    pub fn apply(&self, ops: &[Op]) -> Result<u64, RegistryError> {
        let mut log = self.log.lock();
        if log.poisoned {
            return Err(RegistryError::Poisoned);
        }
        let record = encode_record(ops);
        let path = self.dir.join(LOG_FILE);
        let written = log
            .file
            .write_all(&record)
            .and_then(|()| log.file.sync_data());
        if let Err(source) = written {
            // Cut off whatever part of the record reached the file, so later appends do not
            // follow garbage; if even that fails, refuse writes until a restart recovers.
            let len = log.len;
            let rolled_back = log
                .file
                .set_len(len)
                .and_then(|()| log.file.seek(SeekFrom::Start(len)).map(|_| ()))
                .and_then(|()| log.file.sync_data());
            if rolled_back.is_err() {
                log.poisoned = true;
            }
            return Err(RegistryError::Io { path, source });
        }
        log.len += record.len() as u64;
        apply_ops(&mut self.state.write(), ops);
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        // The change itself is durable in the log; a failed fold only means the log stays long
        // until the next attempt.
        if log.len > self.compact_bytes
            && let Err(err) = self.compact_locked(&mut log)
        {
            tracing::warn!(error = %err, "registry compaction failed; the log keeps growing");
        }
        drop(log);
        self.changed.notify_one();
        Ok(version)
    }

    /// Replaces nothing, adds everything: merges `entries` in and writes a fresh snapshot, all or
    /// nothing (the snapshot is renamed into place only once complete).
    pub fn import(&self, entries: &[(E164, Visibility)]) -> Result<u64, RegistryError> {
        let mut log = self.log.lock();
        if log.poisoned {
            return Err(RegistryError::Poisoned);
        }
        let mut merged = self.state.read().clone();
        for &(number, visibility) in entries {
            merged.insert(number, visibility);
        }
        write_snapshot(&self.dir, &merged)?;
        reset_log(&self.dir, &mut log)?;
        *self.state.write() = merged;
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        drop(log);
        self.changed.notify_one();
        Ok(version)
    }

    /// Folds the log into a new snapshot now.
    pub fn compact(&self) -> Result<(), RegistryError> {
        let mut log = self.log.lock();
        self.compact_locked(&mut log)
    }

    fn compact_locked(&self, log: &mut LogWriter) -> Result<(), RegistryError> {
        let state = self.state.read().clone();
        write_snapshot(&self.dir, &state)?;
        reset_log(&self.dir, log)
    }

    /// A counter that grows with every applied change (starts at 1 when opened).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Signalled after every applied change; the index builder waits on it.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }

    /// All discoverable numbers and the version they reflect.
    pub fn discoverable(&self) -> (Vec<E164>, u64) {
        let state = self.state.read();
        let version = self.version();
        let numbers = state
            .iter()
            .filter(|(_, v)| **v == Visibility::Discoverable)
            .map(|(n, _)| *n)
            .collect();
        (numbers, version)
    }

    /// The state of one number, if registered.
    pub fn get(&self, number: E164) -> Option<Visibility> {
        self.state.read().get(&number).copied()
    }

    /// How many numbers are registered, by visibility.
    pub fn counts(&self) -> Counts {
        let state = self.state.read();
        let hidden = state.values().filter(|v| **v == Visibility::Hidden).count() as u64;
        Counts {
            discoverable: state.len() as u64 - hidden,
            hidden,
        }
    }

    /// Every registration, sorted by number.
    pub fn entries(&self) -> Vec<(E164, Visibility)> {
        let mut all: Vec<_> = self.state.read().iter().map(|(n, v)| (*n, *v)).collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all
    }

    /// Flushes the log to disk (every acknowledged write already is; this is for shutdown).
    pub fn flush(&self) -> Result<(), RegistryError> {
        let log = self.log.lock();
        log.file.sync_all().map_err(|source| RegistryError::Io {
            path: self.dir.join(LOG_FILE),
            source,
        })
    }
}

fn apply_ops(state: &mut HashMap<E164, Visibility>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Add(n) => {
                state.insert(n, Visibility::Discoverable);
            }
            Op::Hide(n) => {
                state.insert(n, Visibility::Hidden);
            }
            Op::Remove(n) => {
                state.remove(&n);
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `path` via a temporary file, fsync and rename, so it is either old or new, never torn.
fn write_atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> Result<(), RegistryError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        fill(&mut out)
            .and_then(|()| out.flush())
            .map_err(io_err(&tmp))?;
    }
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn write_snapshot(dir: &Path, state: &HashMap<E164, Visibility>) -> Result<(), RegistryError> {
    let mut entries: Vec<u64> = state
        .iter()
        .map(|(n, v)| match v {
            Visibility::Discoverable => n.get(),
            Visibility::Hidden => n.get() | HIDDEN_BIT,
        })
        .collect();
    entries.sort_unstable();
    write_atomically(dir, SNAPSHOT_FILE, |out| {
        let mut crc = crc32fast::Hasher::new();
        let mut put = |out: &mut BufWriter<&File>, bytes: &[u8]| {
            crc.update(bytes);
            out.write_all(bytes)
        };
        put(out, SNAPSHOT_MAGIC)?;
        put(out, &(entries.len() as u64).to_le_bytes())?;
        for e in &entries {
            put(out, &e.to_le_bytes())?;
        }
        out.write_all(&crc.finalize().to_le_bytes())
    })
}

fn read_snapshot(path: &Path, state: &mut HashMap<E164, Visibility>) -> Result<u64, RegistryError> {
    let corrupt = |why| RegistryError::CorruptSnapshot {
        path: path.to_owned(),
        why,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; 16];
    input
        .read_exact(&mut header)
        .map_err(|_| corrupt("short header"))?;
    crc.update(&header);
    if &header[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let count = u64::from_le_bytes(
        header[8..]
            .try_into()
            .map_err(|_| corrupt("short header"))?,
    );
    if count.checked_mul(8).and_then(|b| b.checked_add(16 + 4)) != Some(file_len) {
        return Err(corrupt("length does not match the entry count"));
    }
    state.reserve(count as usize);
    let mut raw = [0u8; 8];
    for _ in 0..count {
        input
            .read_exact(&mut raw)
            .map_err(|_| corrupt("truncated"))?;
        crc.update(&raw);
        let value = u64::from_le_bytes(raw);
        let number = E164::from_u64(value & !HIDDEN_BIT).map_err(|_| corrupt("invalid number"))?;
        let visibility = if value & HIDDEN_BIT != 0 {
            Visibility::Hidden
        } else {
            Visibility::Discoverable
        };
        state.insert(number, visibility);
    }
    let mut stored = [0u8; 4];
    input
        .read_exact(&mut stored)
        .map_err(|_| corrupt("truncated"))?;
    if u32::from_le_bytes(stored) != crc.finalize() {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(count)
}

fn create_empty_log(dir: &Path) -> Result<(), RegistryError> {
    write_atomically(dir, LOG_FILE, |out| out.write_all(LOG_MAGIC))
}

/// Replaces the log with an empty one (after a snapshot captured everything in it).
fn reset_log(dir: &Path, log: &mut LogWriter) -> Result<(), RegistryError> {
    create_empty_log(dir)?;
    let path = dir.join(LOG_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
    log.file = file;
    log.len = LOG_MAGIC.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
