#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, property, integration over real
# HTTP, the real binary as a child process, replicas with a real Redis) and a bounded run of
# every fuzz target. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# The replica tests start a real Redis on loopback (shared registry stream and rate limits);
# the Redis TLS test makes its certificates with openssl.
missing=()
command -v redis-server > /dev/null || missing+=(redis-server)
command -v openssl > /dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" > /dev/null
fi
cargo fmt --all -- --check
cargo clippy --locked --all-targets --all-features -- -D warnings
cargo test --locked --all-targets --features test-hooks
cargo test --locked --doc --features test-hooks
# The Kubernetes manifests against the API schemas (kubernetes-validate from PyPI).
scripts/validate-manifests.sh
# Every fuzz target for a bounded time (FUZZ_SECONDS each, default 10) on the stable toolchain.
scripts/fuzz-smoke.sh
