//! The module layering ARCHITECTURE.md states, checked on the source: which top-level modules
//! each may import (arrows point down only), and no import cycle between the modules one level
//! below (`server::api`, `store::registry`, ...). Unit-test modules (from a `#[cfg(test)]` line
//! at column 0 to the end of the file) are left out: a test may borrow a tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each top-level module may import, besides itself. `log_safe`, `clock` and `metrics` sit
/// at the bottom beside `domain`; `main.rs` and `commands` sit on top and may import anything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("log_safe", &[]),
    ("clock", &[]),
    ("metrics", &["log_safe"]),
    ("domain", &["log_safe"]),
    ("protocol", &["domain", "log_safe"]),
    ("client", &["protocol", "domain", "log_safe", "clock"]),
    // The private set is kept in its wire form (Golomb-coded shards, ETags): store builds
    // what `protocol` defines rather than a second copy of the format.
    (
        "store",
        &["protocol", "domain", "log_safe", "clock", "metrics"],
    ),
    (
        "server",
        &[
            "store", "protocol", "domain", "log_safe", "clock", "metrics",
        ],
    ),
    (
        "tools",
        &[
            "client", "server", "store", "protocol", "domain", "log_safe", "clock", "metrics",
        ],
    ),
];

/// Top-level items that are not modules: the `LogSafe` macros, exported at the crate root by
/// `log_safe`.
const MACROS: &[&str] = &[
    "safe_event",
    "safe_info",
    "safe_warn",
    "safe_error",
    "safe_debug",
];

/// Every `.rs` file under `src/` with its module path (`src/server/api/mod.rs` → `server::api`).
fn sources() -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
                .expect("under src/");
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod" || l == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            let without_tests = match text.find("\n#[cfg(test)]") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            out.push((module, without_tests));
        }
    }
    out
}

/// The module paths a source names through `crate::` (also inside `use crate::{a, b::c}`),
/// cut to `depth` segments.
fn imports(text: &str, depth: usize) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        // `$crate::` is a macro's own path; skip it.
        if text[..at].ends_with('$') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                found.insert(path_of(item.trim(), depth));
            }
        } else {
            found.insert(path_of(rest, depth));
        }
    }
    found.retain(|p| !p.is_empty() && !MACROS.contains(&p[0].as_str()));
    found
}

fn path_of(text: &str, depth: usize) -> Vec<String> {
    text.split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty() && s.chars().next().is_some_and(|c| c.is_lowercase()))
        .take(depth)
        .collect()
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut offences = Vec::new();
    for (module, text) in sources() {
        let Some(top) = module.first() else { continue };
        let Some(may) = allowed.get(top.as_str()) else {
            continue; // main.rs, commands.rs, wipe_alloc.rs: the top of the stack
        };
        for import in imports(&text, 1) {
            let target = import[0].as_str();
            if target != top && !may.contains(&target) {
                offences.push(format!("{} imports {target}", module.join("::")));
            }
        }
    }
    assert!(offences.is_empty(), "arrows pointing up: {offences:#?}");
}

#[test]
fn no_import_cycle_between_modules() {
    // Edges between second-level modules (`server::api` → `store::rotation`).
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in sources() {
        if module.is_empty() {
            continue;
        }
        let from = module
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join("::");
        for import in imports(&text, 2) {
            let to = import.join("::");
            if to != from
                && !from.starts_with(&format!("{to}::"))
                && !to.starts_with(&format!("{from}::"))
            {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_checker_sees_grouped_and_nested_imports() {
    let text = "use crate::{server::api::ApiError, store::registry};\nuse crate::domain::E164;\n$crate::log_safe::x; crate::safe_info!(\"x\");";
    let found: Vec<String> = imports(text, 2).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["domain", "server::api", "store::registry"]);
}

/// The public listener's handlers, middleware and extractor, and its state: none of them can
/// name what writes the registry or checks admin tokens (`PublicState` does not hold them, and
/// the public router is built with `PublicState` only).
#[test]
fn no_public_handler_sees_admin_state() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/api");
    let admin_only = [
        "AdminState",
        "RegistryWriter",
        "admin_token",
        "metrics_token",
        "store::registry",
        "store::writer",
        "Registry",
    ];
    let mut offences = Vec::new();
    for file in ["public.rs", "caller.rs", "overload.rs"] {
        let text = std::fs::read_to_string(root.join(file)).expect("a public API source");
        for name in admin_only {
            if text.contains(name) {
                offences.push(format!("server/api/{file} names {name}"));
            }
        }
    }
    // The public state's own fields.
    let state = std::fs::read_to_string(root.join("state.rs")).expect("state.rs");
    let public = &state[state.find("pub struct Public {").expect("struct Public")..];
    let public = &public[..public.find("\n}").expect("end of struct Public")];
    for name in admin_only {
        if public.contains(name) {
            offences.push(format!("struct Public holds {name}"));
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
}

/// `protocol` is the wire without HTTP: it names no web framework or HTTP client, so what it
/// defines is the same for the server, the client and any other transport (scripts/test.sh
/// checks the client build's dependency tree as well).
#[test]
fn protocol_names_no_http_crate() {
    const HTTP_CRATES: &[&str] = &[
        "axum::",
        "hyper::",
        "hyper_util::",
        "http::",
        "http_body_util::",
        "tower::",
        "tower_http::",
        "reqwest::",
    ];
    let mut offences = Vec::new();
    for (module, text) in sources() {
        if module.first().is_none_or(|top| top != "protocol") {
            continue;
        }
        for name in HTTP_CRATES {
            if text.contains(name) {
                offences.push(format!("{} names {name}", module.join("::")));
            }
        }
    }
    assert!(offences.is_empty(), "HTTP in protocol: {offences:#?}");
}

/// The registry's number format (a `u64` of digits with a hidden bit) is its own business:
/// replication ships an opaque `Snapshot`, and nothing outside `store/registry/` names the bit.
#[test]
fn the_number_format_stays_in_the_registry() {
    let offences: Vec<String> = sources()
        .into_iter()
        .filter(|(module, _)| module.get(..2) != Some(&["store".to_owned(), "registry".to_owned()]))
        .filter(|(_, text)| text.contains("HIDDEN_BIT") || text.contains("raw_entries"))
        .map(|(module, _)| module.join("::"))
        .collect();
    assert!(
        offences.is_empty(),
        "the number format leaks to {offences:?}"
    );
}
