//! Where this replica is in the change stream: a stream entry id, kept in `replication.pos`
//! beside the registry files and written after every applied batch.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::ReplicationError;
use crate::store::atomic_file::write_atomically;

/// The resume point, beside the registry files.
const POSITION_FILE: &str = "replication.pos";

/// A Redis stream entry id, `<milliseconds>-<sequence>`: the resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamPos {
    ms: u64,
    seq: u64,
}

// Positions reach logs: an id names a moment, never a number.
impl crate::log_safe::LogSafe for StreamPos {}

impl StreamPos {
    /// Before every entry.
    pub const ZERO: StreamPos = StreamPos { ms: 0, seq: 0 };

    /// The first id of millisecond `ms` (`<ms>-0`), the only kind this code writes.
    pub(super) fn at_millis(ms: u64) -> Self {
        StreamPos { ms, seq: 0 }
    }

    /// The id's milliseconds: the writer's clock when the entry was added.
    pub(super) fn millis(self) -> u64 {
        self.ms
    }
}

impl fmt::Display for StreamPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Text that is not a stream entry id.
#[derive(Debug, thiserror::Error)]
#[error("not a stream entry id (expected <ms>-<seq>)")]
pub struct BadStreamPos;

impl FromStr for StreamPos {
    type Err = BadStreamPos;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.trim().split_once('-').ok_or(BadStreamPos)?;
        Ok(StreamPos {
            ms: ms.parse().map_err(|_| BadStreamPos)?,
            seq: seq.parse().map_err(|_| BadStreamPos)?,
        })
    }
}

/// The resume point recorded in `dir`, or `None` if there is none yet.
pub(super) fn read_position(dir: &Path) -> Result<Option<StreamPos>, ReplicationError> {
    let path = dir.join(POSITION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .parse()
            .map(Some)
            .map_err(|_| ReplicationError::Position {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a stream id"),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReplicationError::Position { path, source }),
    }
}

/// Records `pos` in `dir`, atomically (a crash leaves the old point or the new one).
pub(super) fn write_position(dir: &Path, pos: StreamPos) -> Result<(), ReplicationError> {
    use std::io::Write;
    write_atomically(dir, POSITION_FILE, |out| writeln!(out, "{pos}")).map_err(|err| {
        ReplicationError::Position {
            path: err.path,
            source: err.source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_positions_parse_print_and_order_numerically() {
        let a: StreamPos = "1700000000000-9".parse().unwrap();
        let b: StreamPos = "1700000000000-10".parse().unwrap();
        let c: StreamPos = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c, "sequence compares as a number, not as text");
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(StreamPos::ZERO.to_string(), "0-0");
        assert_eq!(StreamPos::at_millis(1_700_000_000_001), c);
        assert_eq!(c.millis(), 1_700_000_000_001);
        for bad in [
            "",
            "12",
            "-1",
            "1-",
            "a-1",
            "1-2-3",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<StreamPos>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resume_point_survives_a_reopen_and_is_absent_at_first() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_position(dir.path()).unwrap().is_none());
        let pos: StreamPos = "42-7".parse().unwrap();
        write_position(dir.path(), pos).unwrap();
        assert_eq!(read_position(dir.path()).unwrap(), Some(pos));
        std::fs::write(dir.path().join(POSITION_FILE), "garbage").unwrap();
        assert!(read_position(dir.path()).is_err());
    }
}
