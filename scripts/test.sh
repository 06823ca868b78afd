#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, property, integration over real
# HTTP, the real binary as a child process, replicas with a real Redis) and a bounded run of
# every fuzz target. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# The replica tests start a real Redis on loopback (shared registry stream and rate limits);
# the Redis TLS test makes its certificates with openssl; tests/prometheus.rs runs a real
# Prometheus and promtool (Debian's prometheus package).
missing=()
command -v redis-server > /dev/null || missing+=(redis-server)
command -v openssl > /dev/null || missing+=(openssl)
command -v prometheus > /dev/null && command -v promtool > /dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
cargo fmt --all -- --check
cargo clippy --locked --all-targets --all-features -- -D warnings
# What we depend on (deny.toml): licences, duplicate versions, crate sources. cargo-deny comes
# from the Rust crate registry. The advisory database cannot be fetched here: see deny.toml.
command -v cargo-deny > /dev/null || cargo install --locked --quiet cargo-deny
cargo deny --offline check licenses bans sources
# The client library builds without the server stack: `protocol` and `client` compile with the
# server code compiled out (so neither can import it); the dependency tree holds no axum, Redis
# or Prometheus, and hyper only as reqwest's HTTP client (its `server` features never enabled).
cargo check --locked --lib --no-default-features --features client
client_build=(--locked --no-default-features --features client --prefix none)
server_crates=$(cargo tree "${client_build[@]}" -e normal | grep -E '^(axum|redis|prometheus) ' || true)
hyper_server=$(cargo tree "${client_build[@]}" -e normal,features -i hyper -i hyper-util |
    grep -E '^hyper(-util)? feature "server' || true)
if [ -n "$server_crates$hyper_server" ]; then
    echo "the client build pulls in the server stack:" >&2
    printf '%s\n%s\n' "$server_crates" "$hyper_server" | sort -u | grep . >&2
    exit 1
fi
cargo test --locked --all-targets --features test-hooks
cargo test --locked --doc --features test-hooks
# Phone-number normalising against libphonenumber's Python port (phonenumbers, pinned, from PyPI
# into a venv under target/) on every region's example numbers in five forms.
scripts/phone-oracle.sh
# The Kubernetes manifests against the API schemas (kubernetes-validate from PyPI).
scripts/validate-manifests.sh
# Every fuzz target for a bounded time (FUZZ_SECONDS each, default 10) on the stable toolchain.
scripts/fuzz-smoke.sh
