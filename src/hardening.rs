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
