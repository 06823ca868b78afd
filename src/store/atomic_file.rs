//! Files replaced whole: the registry snapshot, the empty log and replication's resume point
//! are written beside the old file, fsync'd and renamed over it, so a crash leaves either the
//! old file or the new one, never a torn mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file that could not be written, or the directory that could not be synced.
/// The message names the path (operator-configured), never the content.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct AtomicWriteError {
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl crate::log_safe::LogSafe for AtomicWriteError {}

/// Writes `dir/name` via a temporary file, fsync and rename, so it is either old or new, never
/// torn. The file is created with mode 0600 (it holds registered numbers) and exclusively: a
/// leftover temporary file is removed first, and a link planted in its place is never followed.
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> Result<(), AtomicWriteError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(at(&tmp)(err)),
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(at(&tmp))?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        fill(&mut out)
            .and_then(|()| out.flush())
            .map_err(at(&tmp))?;
    }
    file.sync_all().map_err(at(&tmp))?;
    fs::rename(&tmp, &path).map_err(at(&path))?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable: without it the new name may not survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> AtomicWriteError + '_ {
    move |source| AtomicWriteError {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_whole_and_privately_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "f", |out| out.write_all(b"old")).unwrap();
        // A leftover temporary file from a crash is replaced, not appended to.
        fs::write(dir.path().join("f.tmp"), b"leftover").unwrap();
        write_atomically(dir.path(), "f", |out| out.write_all(b"new")).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"new");
        assert!(!dir.path().join("f.tmp").exists());
        let mode = fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "f", |out| out.write_all(b"old")).unwrap();
        let failed = write_atomically(dir.path(), "f", |_| Err(io::Error::other("full")));
        assert!(failed.is_err_and(|e| e.path.ends_with("f.tmp")));
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"old");
    }
}
