//! Key material on disk: 32 bytes as 64 hex characters, created with mode 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

/// Reads a 32-byte key from `path`.
pub fn read_key(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?);
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
}
