#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, property, integration over real
# HTTP, the real binary as a child process, replicas with a real Redis) and a bounded run of
# every fuzz target. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# The replica tests start a real Redis on loopback (shared registry stream and rate limits).
if ! command -v redis-server > /dev/null; then
    sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server > /dev/null
fi
cargo fmt --all -- --check
cargo clippy --locked --all-targets --all-features -- -D warnings
cargo test --locked --all-targets --features test-hooks
cargo test --locked --doc --features test-hooks
# The Kubernetes manifests against the API schemas (kubernetes-validate from PyPI).
scripts/validate-manifests.sh
# Every fuzz target for a bounded time (FUZZ_SECONDS each, default 10) on the stable toolchain.
scripts/fuzz-smoke.sh
