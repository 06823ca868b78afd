//! The files a run leaves besides its report (`--hdr-log`, `--plot`): checked before the run,
//! so a typo in a directory fails at once and not after an hour of load, and written whole at
//! its end through a temporary file and a rename, so a crash never leaves a file that looks
//! complete but is not. An existing file is replaced. Files are created mode 0600, as the
//! crate's one way of replacing a file whole makes them (`chmod` to share one).

use std::io::Write;
use std::path::Path;

use super::timeline::Recording;
use super::{LoadgenArgs, LoadgenError, hdr_log, plot};
use crate::store::atomic_file::write_atomically;

/// Refuses output paths that cannot be written at the end of the run.
pub(super) fn check(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    let outputs = [("--hdr-log", &args.hdr_log), ("--plot", &args.plot)];
    for (flag, path) in outputs {
        let Some(path) = path else { continue };
        let (dir, _) = split(path)?;
        if !dir.is_dir() {
            return Err(LoadgenError::Invalid(format!(
                "{flag} {}: {} is not a directory",
                path.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Writes the files the flags asked for.
pub(super) fn write(args: &LoadgenArgs, recording: &Recording) -> Result<(), LoadgenError> {
    let description = describe(args);
    if let Some(path) = &args.hdr_log {
        let log = hdr_log::render(recording, &description).map_err(|why| failed(path, &why))?;
        save(path, &log)?;
    }
    if let Some(path) = &args.plot {
        let svg = plot::render(recording, &description).map_err(|why| failed(path, &why))?;
        save(path, svg.as_bytes())?;
    }
    Ok(())
}

/// What was run, for the log's header and the chart's title: mode, pace, length, encoding and
/// batch sizes (settings only; the server's address is left out of files meant for sharing).
/// The mode comes first: a private run's latencies are evaluations, not lookups.
fn describe(args: &LoadgenArgs) -> String {
    let pace = if args.closed {
        format!("closed loop on {} connections", args.max_in_flight)
    } else {
        format!("open loop at {} requests/s", args.rate)
    };
    format!(
        "{} mode, {pace} for {}, {} encoding, batch {}",
        args.mode.name(),
        humantime::format_duration(args.duration),
        format!("{:?}", args.encoding).to_lowercase(),
        args.batch
    )
}

/// Replaces `path` with `bytes` whole (a temporary `<name>.tmp` beside it, fsync, rename).
fn save(path: &Path, bytes: &[u8]) -> Result<(), LoadgenError> {
    let (dir, name) = split(path)?;
    write_atomically(dir, name, |out| out.write_all(bytes))
        .map_err(|err| failed(path, &err.source.to_string()))
}

/// The directory and file name of an output path.
fn split(path: &Path) -> Result<(&Path, &str), LoadgenError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| failed(path, "not a file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

fn failed(path: &Path, why: &str) -> LoadgenError {
    LoadgenError::Invalid(format!("writing {}: {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::loadgen::parse_args;

    #[test]
    fn output_paths_split_into_directory_and_name() {
        let (dir, name) = split(Path::new("out.svg")).unwrap();
        assert_eq!((dir, name), (Path::new("."), "out.svg"));
        let (dir, name) = split(Path::new("/tmp/run/out.hlog")).unwrap();
        assert_eq!((dir, name), (Path::new("/tmp/run"), "out.hlog"));
        assert!(split(Path::new("/")).is_err());
        assert!(split(Path::new("..")).is_err());
    }

    #[test]
    fn the_description_names_the_settings_as_typed() {
        let parse = |flags: &[&str]| describe(&parse_args(flags));
        assert_eq!(
            parse(&[
                "--rate",
                "200",
                "--duration",
                "20s",
                "--batch",
                "lognormal:300:1.0"
            ]),
            "hashed mode, open loop at 200 requests/s for 20s, binary encoding, batch \
             lognormal:300:1"
        );
        assert_eq!(
            parse(&["--closed", "--max-in-flight", "8", "--encoding", "json"]),
            "hashed mode, closed loop on 8 connections for 10s, json encoding, batch 1000"
        );
        assert_eq!(
            parse(&["--mode", "private", "--rate", "50", "--batch", "100"]),
            "private mode, open loop at 50 requests/s for 10s, binary encoding, batch 100"
        );
        let args = parse_args(&["--hdr-log", "a.hlog", "--plot", "b.svg"]);
        assert_eq!(args.hdr_log.as_deref(), Some(Path::new("a.hlog")));
        assert_eq!(args.plot.as_deref(), Some(Path::new("b.svg")));
    }

    #[test]
    fn saving_replaces_an_existing_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.hlog");
        std::fs::write(&path, b"an older run").unwrap();
        save(&path, b"this run").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"this run");
        assert!(!dir.path().join("run.hlog.tmp").exists());
    }
}
