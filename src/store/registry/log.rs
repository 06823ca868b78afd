//! The write-ahead log (`registry.log`): `magic "CDLOG001"` then checksummed records
//! (`record.rs`), one per change. A record is appended and fsync'd before its change is applied
//! in memory; on open the log is replayed and a torn or corrupt tail is cut off.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{LOG_MAGIC, Op, decode_record, encode_record};
use super::{LOG_FILE, RegistryError};
use crate::store::atomic_file::write_atomically;

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
            create_empty(dir)?;
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
        let mut log = Self {
            path,
            file,
            len: 0,
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

    /// Replaces the log with an empty one (after a snapshot captured everything in it).
    pub(super) fn reset(&mut self, dir: &Path) -> Result<(), RegistryError> {
        create_empty(dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_at(&self.path))?;
        file.seek(SeekFrom::End(0)).map_err(io_at(&self.path))?;
        self.file = file;
        self.len = LOG_MAGIC.len() as u64;
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

fn create_empty(dir: &Path) -> Result<(), RegistryError> {
    write_atomically(dir, LOG_FILE, |out| out.write_all(LOG_MAGIC))?;
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}
