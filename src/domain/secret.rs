//! Key material on disk: 32 bytes as 64 hex characters, created with mode 0600 in a data
//! directory of mode 0700; existing key files that group or others could read or change are
//! refused.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::Zeroizing;

/// Why key material could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The contents are not 64 hex characters.
    #[error("key file {path}: expected 64 hex characters (32 bytes)")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// A key given in the environment is not 64 hex characters.
    #[error("{name}: expected 64 hex characters (32 bytes)")]
    EnvFormat {
        /// Which setting.
        name: &'static str,
    },
    /// A key file that group or others may read or change: the key may be known to others.
    #[error(
        "key file {path} has mode {mode:04o}: group or others may read or change it; refusing \
         to start. Restrict it with `chmod 600 {path}` (and replace the key if others may have \
         read it)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A token file (admin token) holds too short a token.
    #[error(
        "token file {path} holds {len} characters after trimming, at least 16 are needed; \
         refusing to start. Write a longer random token into it, or delete it to have one \
         generated"
    )]
    WeakToken {
        /// The file.
        path: PathBuf,
        /// How many characters it holds.
        len: usize,
    },
    /// The data directory could not be created or inspected.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory is not a directory.
    #[error("data directory {path} exists but is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

// Its messages name the file and the problem, never the key.
impl crate::log_safe::LogSafe for KeyFileError {}

/// Shortest token accepted (admin token), from any source.
pub const MIN_TOKEN_LEN: usize = 16;

/// Permission bits as `ls` would show them in octal (for log lines).
struct FileMode(u32);

impl std::fmt::Display for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl crate::log_safe::LogSafe for FileMode {}

/// Refuses a key file that group or others could read or change: its permission bits must be
/// within 0600, with one exception: read access for the file's group when that group is this
/// process's own group. That is how Kubernetes mounts a Secret for a non-root container
/// (`defaultMode: 0400` plus the pod's `fsGroup` gives `0440`, group = the pod's group), and on
/// a system with a group per user it gives no one else access.
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
    let meta = fs::metadata(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    let own_group = meta.gid() == rustix::process::getegid().as_raw();
    let allowed = if own_group { 0o640 } else { 0o600 };
    if mode & 0o777 & !allowed != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Makes sure `dir` exists as a directory only its owner can enter: created with mode 0700
/// (parents too) if missing; tightened to 0700 with a warning if it exists with group or other
/// permissions. If it cannot be tightened (this process is not its owner, e.g. a Kubernetes
/// `emptyDir`, which is root's and 0777) a warning says so and start-up goes on: every file the
/// service writes in it is created 0600 and replaced by rename, never opened through a link.
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::DataDir {
        path: dir.to_owned(),
        source,
    };
    match fs::metadata(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            // The umask can only have removed bits; make sure of exactly 0700.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
        }
        Err(err) => Err(io(err)),
        Ok(meta) if !meta.is_dir() => Err(KeyFileError::NotADirectory {
            path: dir.to_owned(),
        }),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 == 0 {
                return Ok(());
            }
            match fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7700)) {
                Ok(()) => crate::safe_warn!(
                    "data directory was open to group or others; tightened to owner only",
                    dir = crate::log_safe::SafePath(dir),
                    was = FileMode(mode),
                    now = FileMode(mode & 0o7700),
                ),
                Err(err) => crate::safe_warn!(
                    "data directory is open to group or others and cannot be tightened (this process is not its owner); the files in it are private (0600) but their names are visible and others may delete them. Run `chmod 700` on it or give the service its own directory",
                    dir = crate::log_safe::SafePath(dir),
                    mode = FileMode(mode),
                    error = err,
                ),
            }
            Ok(())
        }
    }
}

/// Removes group and other permissions from the file at `path` if it has any (files written by
/// an older version, or copied in); returns whether it changed anything.
pub fn tighten_file(path: &Path) -> std::io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() || mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7700))?;
    crate::safe_warn!(
        "file was readable or writable by group or others; tightened to owner only",
        file = crate::log_safe::SafePath(path),
        was = FileMode(mode),
    );
    Ok(true)
}

/// The text of the file at `path`, which must be private ([`check_private`]).
fn read_private(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(Zeroizing::new(text))
}

/// Reads a bearer token file (`admin.token`, `metrics.token`) at `path`: private (see
/// [`check_private`]) and at least [`MIN_TOKEN_LEN`] characters after trimming.
pub fn read_token_file(path: &Path) -> Result<String, KeyFileError> {
    let text = read_private(path)?;
    let token = text.trim();
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(KeyFileError::WeakToken {
            path: path.to_owned(),
            len: token.chars().count(),
        });
    }
    Ok(token.to_owned())
}

/// Parses 64 hex characters (surrounding white space ignored) into 32 bytes.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Formats 32 bytes as 64 lower-case hex characters.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a 32-byte key from `path`, refusing a file others could read or change
/// ([`check_private`]).
pub fn read_key(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let text = read_private(path)?;
    parse_hex32(&text).ok_or_else(|| KeyFileError::Format {
        path: path.to_owned(),
    })
}

/// Reads the key at `path`, or creates it with fresh random bytes (mode 0600) if it does not exist.
/// Returns the key and whether it was created.
pub fn read_or_create_key(path: &Path) -> Result<([u8; 32], bool), KeyFileError> {
    if path.exists() {
        return Ok((read_key(path)?, false));
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    write_secret_file(path, to_hex(&key).as_bytes())?;
    Ok((key, true))
}

/// Reads the token file at `path` ([`read_token_file`]), or creates it with a fresh random token
/// (64 hex characters, mode 0600) if it does not exist.
pub fn read_or_create_token(path: &Path) -> Result<String, KeyFileError> {
    if path.exists() {
        return read_token_file(path);
    }
    let (bytes, _) = read_or_create_key(path)?;
    Ok(to_hex(&bytes))
}

/// Creates `path` with mode 0600 and `contents`, durably; fails if it already exists.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let key = [0x5a; 32];
        assert_eq!(parse_hex32(&to_hex(&key)), Some(key));
        assert_eq!(parse_hex32(&format!("  {}\n", to_hex(&key))), Some(key));
        assert_eq!(parse_hex32("abc"), None);
        assert_eq!(parse_hex32(&"zz".repeat(32)), None);
    }

    #[test]
    fn created_key_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (first, created) = read_or_create_key(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = read_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(first, second);
    }

    #[test]
    fn key_files_open_to_others_are_refused_but_own_group_read_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        read_or_create_key(&path).unwrap();
        let set = |mode| fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            // A file created by this process has its group: Kubernetes' fsGroup Secret mounts.
            (0o640, true),
            (0o660, false),
            (0o604, false),
            (0o644, false),
            (0o602, false),
        ] {
            set(mode);
            let refused = matches!(
                read_key(&path),
                Err(KeyFileError::Permissions { mode: m, .. }) if m == mode
            );
            assert_eq!(!refused, ok, "{mode:o}");
        }
    }

    #[test]
    fn data_directory_is_created_private_and_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = dir.join("f");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            ensure_private_dir(&file),
            Err(KeyFileError::NotADirectory { .. })
        ));
    }
}
