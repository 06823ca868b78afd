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
# A test that cannot run here says so with a `SKIPPED: …` line when it skips, and again in a
# summary at the end, so that a skip cannot pass unseen.
skip_report=$(mktemp)
export CONTAINER_TEST_SKIP_REPORT=${skip_report}
summarise_skips() {
    local status=$?
    if [ -s "${skip_report}" ]; then
        echo "== skipped in this run ==" >&2
        cat "${skip_report}" >&2
    fi
    rm -f "${skip_report}"
    exit "${status}"
}
trap summarise_skips EXIT
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
# docs/openapi.yaml against the running server, both listeners: Schemathesis (PyPI), every check
# and phase (the stateful one through the spec's links), bounded to about a minute. It runs the
# binary cargo test just built (its test hooks act only on headers the spec does not have), which
# saves a second build of the crate without them.
BIN=${CARGO_TARGET_DIR:-target}/debug/contact-discovery scripts/schemathesis.sh
# The container image built from deploy/Dockerfile (bases from Debian's packages, the binary
# cargo test just built) and run under a Docker daemon of its own: non-root, read-only, healthy,
# a discovery inside, SIGTERM draining. Skips, loudly, only if no daemon can run here.
scripts/container-test.sh
# Phone-number normalising against libphonenumber's Python port (phonenumbers, pinned, from PyPI
# into a venv under target/) on every region's example numbers in five forms.
scripts/phone-oracle.sh
# The Kubernetes manifests against the API schemas (kubernetes-validate from PyPI).
scripts/validate-manifests.sh
# Every fuzz target for a bounded time (FUZZ_SECONDS each, default 10) on the stable toolchain.
scripts/fuzz-smoke.sh
