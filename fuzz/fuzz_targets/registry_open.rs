//! Opening a registry from arbitrary files: the first byte picks whether the rest is the log,
//! the snapshot, or (split at the second byte) both. Opening returns Ok or a clean error, never
//! panics; a log it accepted reopens to the same state with nothing more to truncate.
#![no_main]

use contact_discovery::store::registry::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (snapshot, log) = match mode % 3 {
        0 => (None, Some(rest)),
        1 => (Some(rest), None),
        _ => {
            let at = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
            (Some(&rest[..at]), Some(&rest[at..]))
        }
    };
    if let Some(bytes) = snapshot {
        std::fs::write(dir.path().join("registry.snap"), bytes).expect("write");
    }
    if let Some(bytes) = log {
        std::fs::write(dir.path().join("registry.log"), bytes).expect("write");
    }
    let first = match Registry::open(dir.path()) {
        Ok((registry, _)) => registry.entries(),
        Err(_) => return,
    };
    let (registry, report) = Registry::open(dir.path()).expect("a recovered registry reopens");
    assert_eq!(report.truncated_bytes, 0, "recovery left a bad tail");
    assert_eq!(registry.entries(), first, "reopening changed the state");
});
