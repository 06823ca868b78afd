//! The logging policy, enforced on the source: outside `src/log_safe.rs` nothing calls
//! `tracing` directly (its macros accept any value; the `safe_*` macros accept only `LogSafe`
//! ones), and only command-line front ends print to stdout or stderr.

use std::path::{Path, PathBuf};

/// Files whose job is to print for a person at a terminal (never request handling).
const MAY_PRINT: &[&str] = &[
    "src/main.rs",
    "src/commands.rs",
    "src/tools/demo.rs",
    "src/tools/audit.rs",
    "src/tools/loadgen/",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code lines (comments dropped) that contain one of `needles`, as `file:line: text`.
fn offending_lines(needles: &[&str], skip: impl Fn(&str) -> bool) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if skip(&relative) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                found.push(format!("{relative}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn only_log_safe_calls_tracing() {
    let found = offending_lines(&["tracing::", "use tracing"], |f| f == "src/log_safe.rs");
    assert!(
        found.is_empty(),
        "log through crate::safe_info!/safe_warn!/safe_error!/safe_debug! instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_command_line_front_ends_print() {
    let found = offending_lines(&["println!", "print!(", "eprint", "dbg!("], |f| {
        MAY_PRINT.iter().any(|p| f.starts_with(p))
    });
    assert!(
        found.is_empty(),
        "printing outside the CLI front ends:\n{}",
        found.join("\n")
    );
}
