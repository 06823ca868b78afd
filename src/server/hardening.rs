//! Process hardening at start: no core dumps, so a crash cannot write request memory to disk.

/// Sets the core-file limit to zero and marks the process non-dumpable (which also stops other
/// processes of the same user from attaching to it or reading its memory).
pub fn disable_core_dumps() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Locks every current and future page of the process into RAM (`mlockall`), so the match
/// index and in-flight request buffers are never written to swap. Needs `CAP_IPC_LOCK` or a
/// large enough `RLIMIT_MEMLOCK`.
pub fn lock_memory() -> std::io::Result<()> {
    use rustix::mm::{MlockAllFlags, mlockall};
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE)?;
    Ok(())
}

/// Replaces the default panic hook with one that logs where a panic happened but never its
/// message: a message could have been formatted from request data (`unwrap` on a value, a
/// `panic!("{x}")`), and panic output goes to the same place as logs.
pub fn install_redacting_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| PanicLocation {
                file: l.file().to_owned(),
                line: l.line(),
            })
            .unwrap_or(PanicLocation {
                file: "unknown".to_owned(),
                line: 0,
            });
        crate::safe_error!(
            "panic (message withheld: it may hold request data)",
            at = location
        );
    }));
}

/// Where in the source a panic happened: source positions only, never runtime values.
struct PanicLocation {
    file: String,
    line: u32,
}

impl std::fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

impl crate::log_safe::LogSafe for PanicLocation {}
