//! The registry: the durable set of registered numbers and whether each is discoverable.
//!
//! On disk it is a snapshot (`registry.snap`) plus a checksummed append-only log (`registry.log`).
//! A change is appended as one record and fsync'd before it is applied in memory and acknowledged,
//! so an acknowledged change survives a crash, and readers only ever see durable state. On open,
//! a torn or corrupt log tail is detected by its checksum and truncated to the last good record.
//! When the log grows past a threshold it is folded into a new snapshot (write, fsync, rename).

pub mod record;

// Errors that reach logs: their messages name files and settings, never numbers.
impl crate::log_safe::LogSafe for RegistryError {}
impl crate::log_safe::LogSafe for record::RecordError {}

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
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
/// Fold the in-memory overlay of recent changes into the sorted vector once it holds this many
/// numbers, so the overlay stays small (the rotation task folds it before every build anyway).
const FOLD_OVERLAY_AT: usize = 1 << 16;
/// Never an entry: its number part (2^63 - 1) is larger than any E.164 number.
const TOMBSTONE: u64 = u64::MAX;

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
    /// The data directory could not be created or made private.
    #[error(transparent)]
    DataDir(#[from] crate::domain::secret::KeyFileError),
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

impl Counts {
    /// Sets the `registry_size` gauges.
    pub fn export_to(self, metrics: &crate::metrics::Metrics) {
        metrics.set_registry_counts(self.discoverable, self.hidden);
    }
}

struct LogWriter {
    file: File,
    len: u64,
    poisoned: bool,
}

/// The registry in memory: 8 bytes per number, laid out like the snapshot body.
///
/// `base` holds raw snapshot entries (the number, with `HIDDEN_BIT` set when hidden) sorted
/// ascending, so the discoverable numbers form its prefix and the hidden ones follow; a snapshot
/// loads straight into it and the index builder reads the prefix without copying. Changes since
/// the last fold live in the small `overlay` and are merged into `base` in place (one linear
/// pass) before an index build, on compaction, and when the overlay grows past
/// `FOLD_OVERLAY_AT`. A `HashMap<E164, Visibility>` would cost about 4× the memory.
#[derive(Clone, Default)]
struct State {
    base: Arc<Vec<u64>>,
    /// Number → its new raw entry, or `None` if removed, for changes not yet folded.
    overlay: BTreeMap<u64, Option<u64>>,
    counts: Counts,
}

impl State {
    fn from_sorted(base: Vec<u64>) -> Self {
        let discoverable = discoverable_len(&base) as u64;
        let hidden = base.len() as u64 - discoverable;
        Self {
            base: Arc::new(base),
            overlay: BTreeMap::new(),
            counts: Counts {
                discoverable,
                hidden,
            },
        }
    }

    fn get(&self, number: E164) -> Option<Visibility> {
        match self.overlay.get(&number.get()) {
            Some(entry) => entry.map(visibility_of),
            None => base_position(&self.base, number.get()).map(|at| visibility_of(self.base[at])),
        }
    }

    fn set(&mut self, number: E164, to: Option<Visibility>) {
        match self.get(number) {
            Some(Visibility::Discoverable) => self.counts.discoverable -= 1,
            Some(Visibility::Hidden) => self.counts.hidden -= 1,
            None => {}
        }
        match to {
            Some(Visibility::Discoverable) => self.counts.discoverable += 1,
            Some(Visibility::Hidden) => self.counts.hidden += 1,
            None => {}
        }
        self.overlay
            .insert(number.get(), to.map(|v| entry_of(number, v)));
    }

    fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::Add(n) => self.set(n, Some(Visibility::Discoverable)),
                Op::Hide(n) => self.set(n, Some(Visibility::Hidden)),
                Op::Remove(n) => self.set(n, None),
            }
        }
    }

    /// Merges the overlay into `base` in place: O(len + changes · log len). Copies `base` only
    /// if an index build still holds it (`Arc::make_mut`).
    fn fold(&mut self) {
        if self.overlay.is_empty() {
            return;
        }
        let base = Arc::make_mut(&mut self.base);
        remove_numbers(base, self.overlay.keys().copied());
        let mut added: Vec<u64> = self.overlay.values().flatten().copied().collect();
        self.overlay.clear();
        added.sort_unstable();
        merge_sorted(base, &added);
    }

    /// Sets many numbers at once (bulk import), the last entry for a number winning; linear
    /// in the registry plus n log n in the entries, with no per-entry overlay node.
    fn set_many(&mut self, entries: &[(E164, Visibility)]) {
        self.fold();
        let mut incoming: Vec<(u64, u64)> = entries
            .iter()
            .map(|&(n, v)| (n.get(), entry_of(n, v)))
            .collect();
        // Stable, so among equal numbers the input order survives and the last one is kept.
        incoming.sort_by_key(|(number, _)| *number);
        let mut added: Vec<u64> = Vec::with_capacity(incoming.len());
        for (i, &(number, entry)) in incoming.iter().enumerate() {
            if incoming.get(i + 1).is_none_or(|next| next.0 != number) {
                added.push(entry);
            }
        }
        drop(incoming);
        let base = Arc::make_mut(&mut self.base);
        if !base.is_empty() {
            remove_numbers(base, added.iter().map(|e| e & !HIDDEN_BIT));
        }
        added.sort_unstable();
        merge_sorted(base, &added);
        *self = Self::from_sorted(std::mem::take(base));
    }
}

/// Removes every entry (either visibility) of `numbers` from a sorted vector. Positions are
/// found before any is marked, so the binary searches run on a sorted vector.
fn remove_numbers(base: &mut Vec<u64>, numbers: impl Iterator<Item = u64>) {
    let stale: Vec<usize> = numbers
        .filter_map(|number| base_position(base, number))
        .collect();
    if !stale.is_empty() {
        for at in stale {
            base[at] = TOMBSTONE;
        }
        base.retain(|e| *e != TOMBSTONE);
    }
}

/// Merges sorted `added` into sorted `base` in place, from the back, so each element moves once
/// and no second vector is needed.
fn merge_sorted(base: &mut Vec<u64>, added: &[u64]) {
    if added.is_empty() {
        return;
    }
    let (mut i, mut j) = (base.len(), added.len());
    base.resize(i + j, 0);
    let mut w = base.len();
    while j > 0 {
        w -= 1;
        if i > 0 && base[i - 1] > added[j - 1] {
            base[w] = base[i - 1];
            i -= 1;
        } else {
            base[w] = added[j - 1];
            j -= 1;
        }
    }
}

/// The raw entry of `number` in the sorted vector (either visibility), if present.
fn base_position(base: &[u64], number: u64) -> Option<usize> {
    base.binary_search(&number)
        .or_else(|_| base.binary_search(&(number | HIDDEN_BIT)))
        .ok()
}

fn entry_of(number: E164, visibility: Visibility) -> u64 {
    match visibility {
        Visibility::Discoverable => number.get(),
        Visibility::Hidden => number.get() | HIDDEN_BIT,
    }
}

fn visibility_of(entry: u64) -> Visibility {
    if entry & HIDDEN_BIT == 0 {
        Visibility::Discoverable
    } else {
        Visibility::Hidden
    }
}

/// How many entries of a sorted vector are discoverable (they sort before every hidden one).
fn discoverable_len(base: &[u64]) -> usize {
    base.partition_point(|e| e & HIDDEN_BIT == 0)
}

/// The discoverable numbers at one registry version, shared without copying: E.164 digits as
/// integers, ascending, every one a valid [`E164`] value.
#[derive(Clone)]
pub struct DiscoverableNumbers {
    base: Arc<Vec<u64>>,
    len: usize,
}

impl DiscoverableNumbers {
    /// The numbers' digits as integers (see [`E164::get`]), ascending.
    pub fn as_digits(&self) -> &[u64] {
        &self.base[..self.len]
    }

    /// How many numbers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The durable registry. Cheap to share behind an `Arc`; writes are serialised.
pub struct Registry {
    dir: PathBuf,
    state: RwLock<State>,
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
        crate::domain::secret::ensure_private_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(RegistryError::Locked {
                path: dir.to_owned(),
            });
        }
        tighten_registry_files(dir)?;

        let mut report = OpenReport::default();
        let snap_path = dir.join(SNAPSHOT_FILE);
        let mut state = if snap_path.exists() {
            let base = read_snapshot(&snap_path)?;
            report.snapshot_entries = base.len() as u64;
            State::from_sorted(base)
        } else {
            State::default()
        };

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
                        state.apply(&ops);
                        good += used;
                        report.log_records += 1;
                    }
                    Err(why) => {
                        crate::safe_warn!(
                            "registry log tail is torn or corrupt; truncating to the last good record",
                            file = crate::log_safe::SafePath(&log_path),
                            offset = good,
                            dropped_bytes = bytes.len() - good,
                            reason = why,
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
        state.fold();

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
        {
            let mut state = self.state.write();
            state.apply(ops);
            if state.overlay.len() > FOLD_OVERLAY_AT {
                state.fold();
            }
        }
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        // The change itself is durable in the log; a failed fold only means the log stays long
        // until the next attempt.
        if log.len > self.compact_bytes
            && let Err(err) = self.compact_locked(&mut log)
        {
            crate::safe_warn!(
                "registry compaction failed; the log keeps growing",
                error = err
            );
        }
        drop(log);
        self.changed.notify_one();
        Ok(version)
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

    /// Makes the registry exactly `entries` (sorted raw entries, as from [`decode_snapshot`]):
    /// a new snapshot is written and the log emptied, all or nothing. A replica loading the
    /// shared snapshot uses this; everything held before is replaced.
    pub fn replace_all(&self, entries: Vec<u64>) -> Result<u64, RegistryError> {
        self.replace_state(|| State::from_sorted(entries))
    }

    /// Writes the state `make` builds (under the log lock, so no change lands meanwhile) as a
    /// new snapshot, empties the log and swaps it in: all or nothing.
    fn replace_state(&self, make: impl FnOnce() -> State) -> Result<u64, RegistryError> {
        let mut log = self.log.lock();
        if log.poisoned {
            return Err(RegistryError::Poisoned);
        }
        let new = make();
        write_snapshot(&self.dir, &new.base)?;
        reset_log(&self.dir, &mut log)?;
        *self.state.write() = new;
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        drop(log);
        self.changed.notify_one();
        Ok(version)
    }

    /// Every registration as sorted raw entries (shared, not copied), for publishing a snapshot.
    pub fn raw_entries(&self) -> Arc<Vec<u64>> {
        let mut state = self.state.write();
        state.fold();
        Arc::clone(&state.base)
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

    fn compact_locked(&self, log: &mut LogWriter) -> Result<(), RegistryError> {
        // Holding the log lock, no change can land between the fold and the write, so the
        // shared vector is exactly the state the snapshot must hold; readers are not blocked.
        let base = {
            let mut state = self.state.write();
            state.fold();
            Arc::clone(&state.base)
        };
        write_snapshot(&self.dir, &base)?;
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

    /// All discoverable numbers and the version they reflect (a copy; index builds use
    /// [`Registry::discoverable_numbers`], which does not copy).
    pub fn discoverable(&self) -> (Vec<E164>, u64) {
        let (numbers, version) = self.discoverable_numbers();
        let numbers = numbers
            .as_digits()
            .iter()
            .filter_map(|d| E164::from_u64(*d).ok())
            .collect();
        (numbers, version)
    }

    /// All discoverable numbers, shared with the registry rather than copied, and the version
    /// they reflect. Folds pending changes first (a linear pass over the registry).
    pub fn discoverable_numbers(&self) -> (DiscoverableNumbers, u64) {
        let mut state = self.state.write();
        state.fold();
        let version = self.version();
        let numbers = DiscoverableNumbers {
            base: Arc::clone(&state.base),
            len: discoverable_len(&state.base),
        };
        (numbers, version)
    }

    /// The state of one number, if registered.
    pub fn get(&self, number: E164) -> Option<Visibility> {
        self.state.read().get(number)
    }

    /// How many numbers are registered, by visibility.
    pub fn counts(&self) -> Counts {
        self.state.read().counts
    }

    /// Every registration, sorted by number.
    pub fn entries(&self) -> Vec<(E164, Visibility)> {
        let mut state = self.state.write();
        state.fold();
        let mut all: Vec<_> = state
            .base
            .iter()
            .filter_map(|e| Some((E164::from_u64(e & !HIDDEN_BIT).ok()?, visibility_of(*e))))
            .collect();
        drop(state);
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

/// Writes `dir/name` via a temporary file, fsync and rename, so it is either old or new, never
/// torn. The file is created with mode 0600 (it holds registered numbers) and exclusively: a
/// leftover temporary file is removed first, and a link planted in its place is never followed.
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> Result<(), RegistryError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(err)),
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
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

/// Bytes converted per read or write call when streaming the snapshot body.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Writes the sorted raw entries: magic, count, entries (u64 LE), crc32 of everything before.
fn write_snapshot(dir: &Path, entries: &[u64]) -> Result<(), RegistryError> {
    write_atomically(dir, SNAPSHOT_FILE, |out| write_snapshot_to(out, entries))
}

/// Reads a snapshot straight into a sorted vector of raw entries, checking the checksum and
/// that every entry is a valid number.
fn read_snapshot(path: &Path) -> Result<Vec<u64>, RegistryError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let input = BufReader::with_capacity(SNAPSHOT_CHUNK, file);
    parse_snapshot(input, file_len).map_err(|why| RegistryError::CorruptSnapshot {
        path: path.to_owned(),
        why,
    })
}

/// The registry's sorted raw entries in the snapshot file format (what replicas share).
pub fn encode_snapshot(entries: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 8 + 4);
    // Writing to a Vec cannot fail.
    let _ = write_snapshot_to(&mut out, entries);
    out
}

/// Parses bytes in the snapshot file format into sorted raw entries, checking the checksum
/// and every number; the error says what is wrong.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Vec<u64>, &'static str> {
    parse_snapshot(bytes, bytes.len() as u64)
}

fn write_snapshot_to(out: &mut impl Write, entries: &[u64]) -> io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    crc.update(&header);
    out.write_all(&header)?;
    let mut bytes = Vec::with_capacity(SNAPSHOT_CHUNK);
    for chunk in entries.chunks(SNAPSHOT_CHUNK / 8) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|e| e.to_le_bytes()));
        crc.update(&bytes);
        out.write_all(&bytes)?;
    }
    out.write_all(&crc.finalize().to_le_bytes())
}

fn parse_snapshot(mut input: impl Read, total_len: u64) -> Result<Vec<u64>, &'static str> {
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; 16];
    input.read_exact(&mut header).map_err(|_| "short header")?;
    crc.update(&header);
    if &header[..8] != SNAPSHOT_MAGIC {
        return Err("bad magic");
    }
    let count = u64::from_le_bytes(header[8..].try_into().map_err(|_| "short header")?);
    if count.checked_mul(8).and_then(|b| b.checked_add(16 + 4)) != Some(total_len) {
        return Err("length does not match the entry count");
    }
    let count = usize::try_from(count).map_err(|_| "too many entries")?;
    let mut entries = Vec::with_capacity(count);
    let mut bytes = vec![0u8; SNAPSHOT_CHUNK];
    let mut sorted = true;
    let mut previous = 0u64;
    let mut valid = true;
    while entries.len() < count {
        let take = (count - entries.len()).min(SNAPSHOT_CHUNK / 8) * 8;
        let chunk = &mut bytes[..take];
        input.read_exact(chunk).map_err(|_| "truncated")?;
        crc.update(chunk);
        for raw in chunk.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(raw);
            let value = u64::from_le_bytes(word);
            valid &= E164::from_u64(value & !HIDDEN_BIT).is_ok();
            sorted &= value > previous;
            previous = value;
            entries.push(value);
        }
    }
    let mut stored = [0u8; 4];
    input.read_exact(&mut stored).map_err(|_| "truncated")?;
    if u32::from_le_bytes(stored) != crc.finalize() {
        return Err("checksum mismatch");
    }
    if !valid {
        return Err("invalid number");
    }
    if !sorted {
        // This writer always sorts; tolerate a snapshot that is not, as the format allows it.
        entries.sort_unstable();
        entries.dedup();
    }
    Ok(entries)
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

#[cfg(test)]
mod state_tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn number(i: u8) -> E164 {
        E164::from_u64(15_550_000_000 + u64::from(i)).unwrap()
    }

    proptest! {
        /// The compact state (sorted vector + overlay, folded at random moments) answers
        /// exactly like a map applied with the same operations.
        #[test]
        fn state_agrees_with_a_map(
            ops in proptest::collection::vec((0u8..3, 0u8..40, any::<bool>()), 0..200),
        ) {
            let mut state = State::default();
            let mut model: HashMap<E164, Visibility> = HashMap::new();
            for (kind, i, fold) in ops {
                let n = number(i);
                let op = match kind { 0 => Op::Add(n), 1 => Op::Hide(n), _ => Op::Remove(n) };
                state.apply(&[op]);
                match op {
                    Op::Add(n) => { model.insert(n, Visibility::Discoverable); }
                    Op::Hide(n) => { model.insert(n, Visibility::Hidden); }
                    Op::Remove(n) => { model.remove(&n); }
                }
                if fold {
                    state.fold();
                    prop_assert!(state.overlay.is_empty());
                    prop_assert!(state.base.windows(2).all(|w| w[0] < w[1]));
                }
                for i in 0..40 {
                    prop_assert_eq!(state.get(number(i)), model.get(&number(i)).copied());
                }
                let hidden = model.values().filter(|v| **v == Visibility::Hidden).count() as u64;
                prop_assert_eq!(state.counts, Counts {
                    discoverable: model.len() as u64 - hidden,
                    hidden,
                });
            }
            state.fold();
            let mut want: Vec<u64> = model
                .iter()
                .filter(|(_, v)| **v == Visibility::Discoverable)
                .map(|(n, _)| n.get())
                .collect();
            want.sort_unstable();
            prop_assert_eq!(&state.base[..discoverable_len(&state.base)], &want[..]);
        }
    }

    #[test]
    fn bulk_import_replaces_existing_and_the_last_duplicate_wins() {
        let mut state = State::default();
        state.apply(&[Op::Add(number(1)), Op::Hide(number(2)), Op::Add(number(3))]);
        state.set_many(&[
            (number(2), Visibility::Discoverable),
            (number(4), Visibility::Discoverable),
            (number(4), Visibility::Hidden),
            (number(1), Visibility::Hidden),
        ]);
        assert_eq!(state.get(number(1)), Some(Visibility::Hidden));
        assert_eq!(state.get(number(2)), Some(Visibility::Discoverable));
        assert_eq!(state.get(number(3)), Some(Visibility::Discoverable));
        assert_eq!(state.get(number(4)), Some(Visibility::Hidden));
        assert_eq!(
            state.counts,
            Counts {
                discoverable: 2,
                hidden: 2
            }
        );
        assert!(state.base.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn fold_copies_only_when_a_build_holds_the_vector() {
        let mut state = State::default();
        state.apply(&[Op::Add(number(1)), Op::Hide(number(2))]);
        state.fold();
        let held = Arc::clone(&state.base);
        state.apply(&[Op::Remove(number(1))]);
        state.fold();
        assert_eq!(held.len(), 2, "a build's view does not change under it");
        assert_eq!(state.base.len(), 1);
        assert_eq!(state.get(number(2)), Some(Visibility::Hidden));
    }

    #[test]
    fn discoverable_numbers_are_a_view_of_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, _) = Registry::open(dir.path()).unwrap();
        reg.apply(&[Op::Add(number(3)), Op::Add(number(1)), Op::Hide(number(2))])
            .unwrap();
        let (numbers, version) = reg.discoverable_numbers();
        assert_eq!(version, reg.version());
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
