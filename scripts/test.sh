#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, integration over real
# HTTP, the real binary as a child process). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --locked --all-targets --all-features -- -D warnings
cargo test --locked --all-targets --features test-hooks
cargo test --locked --doc --features test-hooks
