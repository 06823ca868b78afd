//! The write-ahead log (`registry.log`): `magic "CDLOG001"` then checksummed records
//! (`record.rs`), one per change. A record is appended and fsync'd before its change is applied
//! in memory; on open the log is replayed and a torn or corrupt tail is cut off.
//!
//! Compaction rotates the log ([`Log::rotate`]): the full log becomes `registry.log.prev` and
//! appends go on in a fresh `registry.log`, so the snapshot can be written without holding up
//! appends; once the snapshot holds everything `registry.log.prev` holds, it is deleted
//! ([`Log::remove_prev`]). On open, `registry.log.prev` (if present) is replayed before
//! `registry.log` ([`replay_prev`]). Why replaying it is always right is in the registry's
//! module documentation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{LOG_MAGIC, Op, decode_record, encode_record};
use super::{LOG_FILE, NEW_LOG_FILE, PREV_LOG_FILE, RegistryError};
use crate::store::atomic_file::{sync_dir, write_atomically};

/// What replaying the log found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Records applied.
    pub records: u64,
    /// Bytes cut from a torn or corrupt tail (0 when the log was clean).
    pub truncated_bytes: u64,
}

/// The open log, positioned at its end.
pub(super) struct Log {
    path: PathBuf,
    file: File,
    len: u64,
    /// Whether `registry.log.prev` exists (a rotated log whose snapshot is not yet written).
    has_prev: bool,
    /// Set when a failed append could not be rolled back: the file's end is unknown.
    poisoned: bool,
}

impl Log {
    /// Opens (or creates) the log in `dir`, hands every good record's operations to `apply` in
    /// order, and cuts off a torn or corrupt tail so appends follow the last good record.
    pub(super) fn open(
        dir: &Path,
        apply: impl FnMut(&[Op]),
    ) -> Result<(Self, Replayed), RegistryError> {
        let path = dir.join(LOG_FILE);
        if !path.exists() {
            create_empty(dir, LOG_FILE)?;
        }
        let io = io_at(&path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_at(&path))?;
        let (good, records) = replay(&bytes, &path, apply);
        let has_prev = dir.join(PREV_LOG_FILE).exists();
        let mut log = Self {
            path,
            file,
            len: 0,
            has_prev,
            poisoned: false,
        };
        let truncated_bytes = (bytes.len() - good) as u64;
        log.cut_to(good, truncated_bytes > 0)?;
        Ok((
            log,
            Replayed {
                records,
                truncated_bytes,
            },
        ))
    }

    /// Makes the file end at `good` (rewriting the magic if not even that survived) and
    /// positions appends there.
    fn cut_to(&mut self, good: usize, torn: bool) -> Result<(), RegistryError> {
        let io = io_at(&self.path);
        let mut end = good as u64;
        if good == 0 {
            self.file.set_len(0).map_err(io)?;
            self.file
                .seek(SeekFrom::Start(0))
                .map_err(io_at(&self.path))?;
            self.file.write_all(LOG_MAGIC).map_err(io_at(&self.path))?;
            self.file.sync_all().map_err(io_at(&self.path))?;
            end = LOG_MAGIC.len() as u64;
        } else if torn {
            self.file.set_len(end).map_err(io)?;
            self.file.sync_all().map_err(io_at(&self.path))?;
        }
        self.file
            .seek(SeekFrom::Start(end))
            .map_err(io_at(&self.path))?;
        self.len = end;
        Ok(())
    }

    /// Refuses writes after an append that could not be rolled back.
    pub(super) fn check_writable(&self) -> Result<(), RegistryError> {
        if self.poisoned {
            return Err(RegistryError::Poisoned);
        }
        Ok(())
    }

    /// Appends `ops` as one record and fsyncs it. On failure, whatever part of the record
    /// reached the file is cut off, so later appends do not follow garbage; if even that
    /// fails, the log refuses writes until a restart recovers it.
    pub(super) fn append(&mut self, ops: &[Op]) -> Result<(), RegistryError> {
        self.check_writable()?;
        let record = encode_record(ops);
        let written = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            if self.roll_back().is_err() {
                self.poisoned = true;
            }
            return Err(RegistryError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += record.len() as u64;
        Ok(())
    }

    fn roll_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.sync_data()
    }

    /// Bytes in the file, magic included.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Replaces the log with an empty one and deletes `registry.log.prev` (after a snapshot
    /// captured everything in both).
    pub(super) fn reset(&mut self, dir: &Path) -> Result<(), RegistryError> {
        create_empty(dir, LOG_FILE)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_at(&self.path))?;
        file.seek(SeekFrom::End(0)).map_err(io_at(&self.path))?;
        self.file = file;
        self.len = LOG_MAGIC.len() as u64;
        self.remove_prev(dir)?;
        sync_dir(dir)?;
        Ok(())
    }

    /// Whether `registry.log.prev` exists.
    pub(super) fn has_prev(&self) -> bool {
        self.has_prev
    }

    /// Makes an empty log file to rotate to (`registry.log.new`), fsync'd. Call it before taking
    /// the lock that orders appends: it costs two fsyncs that appends need not wait for.
    pub(super) fn prepare_rotation(dir: &Path) -> Result<(), RegistryError> {
        create_empty(dir, NEW_LOG_FILE)
    }

    /// Makes the log `registry.log.prev` and continues in the empty `registry.log.new` (from
    /// [`Log::prepare_rotation`]) as `registry.log`. Refused while `registry.log.prev` exists.
    ///
    /// The log is first linked as `registry.log.prev`, then the new file renamed over
    /// `registry.log`, then the directory fsync'd: at every moment, and after a crash at any
    /// point, the file appends go to is `registry.log`, and every record is in
    /// `registry.log.prev`, `registry.log` or both (replayed twice then, which is harmless).
    pub(super) fn rotate(&mut self, dir: &Path) -> Result<(), RegistryError> {
        self.check_writable()?;
        let prev = dir.join(PREV_LOG_FILE);
        let new = dir.join(NEW_LOG_FILE);
        if self.has_prev {
            return Err(RegistryError::Io {
                path: prev,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&new)
            .map_err(io_at(&new))?;
        file.seek(SeekFrom::End(0)).map_err(io_at(&new))?;
        fs::hard_link(&self.path, &prev).map_err(io_at(&prev))?;
        if let Err(source) = fs::rename(&new, &self.path) {
            // Back to one name for the log; if even that fails, `registry.log.prev` is the log
            // too, and replaying it twice is harmless.
            let _ = fs::remove_file(&prev).map(|()| sync_dir(dir));
            self.has_prev = prev.exists();
            return Err(RegistryError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.has_prev = true;
        // Appends go to the new file from here on; the rename must be durable before the first
        // of them is acknowledged.
        self.file = file;
        self.len = LOG_MAGIC.len() as u64;
        sync_dir(dir)?;
        Ok(())
    }

    /// Deletes `registry.log.prev`, once a snapshot holds everything in it. The directory is not
    /// fsync'd here: should the file come back after a crash, replaying it is harmless.
    pub(super) fn remove_prev(&mut self, dir: &Path) -> Result<(), RegistryError> {
        let prev = dir.join(PREV_LOG_FILE);
        match fs::remove_file(&prev) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(io_at(&prev)(err)),
            _ => {}
        }
        self.has_prev = false;
        Ok(())
    }

    /// Flushes the file to disk (every acknowledged append already is; this is for shutdown).
    pub(super) fn sync(&self) -> Result<(), RegistryError> {
        self.file.sync_all().map_err(io_at(&self.path))
    }
}

/// Applies every good record of `bytes` in order; returns where the good part ends and how
/// many records it holds. A log without its header was torn while being created: nothing in
/// it was ever acknowledged, so none of it is good.
fn replay(bytes: &[u8], path: &Path, mut apply: impl FnMut(&[Op])) -> (usize, u64) {
    let mut good = LOG_MAGIC.len();
    if bytes.len() < good || &bytes[..good] != LOG_MAGIC {
        return (0, 0);
    }
    let mut records = 0;
    while good < bytes.len() {
        match decode_record(&bytes[good..]) {
            Ok((ops, used)) => {
                apply(&ops);
                good += used;
                records += 1;
            }
            Err(why) => {
                crate::safe_warn!(
                    "registry log tail is torn or corrupt; truncating to the last good record",
                    file = crate::log_safe::SafePath(path),
                    offset = good,
                    dropped_bytes = bytes.len() - good,
                    reason = why,
                );
                break;
            }
        }
    }
    (good, records)
}

/// Replays `registry.log.prev` if it exists, handing every good record's operations to `apply`
/// in order, and returns how many records it held (`None` without the file). A torn or corrupt
/// tail is reported and left as it is: nothing is ever appended to this file.
pub(super) fn replay_prev(
    dir: &Path,
    apply: impl FnMut(&[Op]),
) -> Result<Option<u64>, RegistryError> {
    let path = dir.join(PREV_LOG_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_at(&path)(err)),
    };
    Ok(Some(replay(&bytes, &path, apply).1))
}

fn create_empty(dir: &Path, name: &str) -> Result<(), RegistryError> {
    write_atomically(dir, name, |out| out.write_all(LOG_MAGIC))?;
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}
