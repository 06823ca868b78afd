#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz-smoke.sh: adds libFuzzer's coverage instrumentation (the flags
# cargo-fuzz passes, minus the nightly-only sanitizer) to our own crates only. Dependencies build
# plain, so they are the ones `cargo test` already built. Cargo does not see flags added here in
# its fingerprints: after editing this file, `touch src/lib.rs` (or clean) to rebuild with them.
rustc="$1"
shift
case " $* " in
*" --crate-name contact_discovery "* | *" --crate-name contact_discovery_fuzz "* | \
    *" --crate-name discover_binary "* | *" --crate-name discover_json "* | \
    *" --crate-name credential "* | *" --crate-name e164 "* | *" --crate-name registry_record "* | \
    *" --crate-name registry_open "* | *" --crate-name vcard "* | *" --crate-name csv "* | \
    *" --crate-name normalise "*)
    exec "$rustc" "$@" \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        -Cdebug-assertions -Coverflow-checks --cfg fuzzing
    ;;
esac
exec "$rustc" "$@"
