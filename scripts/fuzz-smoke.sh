#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time (FUZZ_SECONDS each, default 10) on its seed
# corpus, failing on any crash. Installs cargo-fuzz and the nightly toolchain if missing.
# Longer runs: see docs/FUZZING.md.
#
#   scripts/fuzz-smoke.sh                          # every target, 10 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh e164 csv # chosen targets, 60 s each
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(discover_binary discover_json credential e164 registry_record registry_open vcard
        csv normalise)
fi

if ! rustup run nightly rustc --version > /dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version > /dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# One build for all targets; the runs below reuse it.
cargo +nightly fuzz build
for target in "${TARGETS[@]}"; do
    # A scratch copy of the seed corpus, so new inputs found in CI do not dirty the tree.
    scratch=$(mktemp -d)
    cp fuzz/corpus/"${target}"/* "${scratch}/"
    echo "fuzz ${target}: ${FUZZ_SECONDS} s" >&2
    # cargo fuzz exits non-zero on a crash; PIPESTATUS keeps that visible through the filter.
    set +e
    cargo +nightly fuzz run "${target}" "${scratch}" -- \
        -max_total_time="${FUZZ_SECONDS}" -rss_limit_mb=1024 -print_final_stats=1 2>&1 \
        | grep -E "^stat::number_of_executed_units|Done |ERROR|panicked|SUMMARY|Test unit"
    status=${PIPESTATUS[0]}
    set -e
    rm -rf "${scratch}"
    if [ "${status}" -ne 0 ]; then
        echo "fuzz ${target}: FAILED (see fuzz/artifacts/${target}/)" >&2
        exit "${status}"
    fi
done
echo "fuzz smoke: ${#TARGETS[@]} targets, ${FUZZ_SECONDS} s each, no findings" >&2
