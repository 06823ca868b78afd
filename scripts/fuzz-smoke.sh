#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time (FUZZ_SECONDS each, default 10) on a copy of
# its seed corpus, failing on any crash. scripts/test.sh (and so CI) runs it.
#
# It needs neither cargo-fuzz nor nightly: the targets are built with the stable toolchain,
# libFuzzer coming from the libfuzzer-sys crate, and scripts/fuzz-rustc-wrapper.sh adding
# libFuzzer's coverage instrumentation to our own crates only. Dependencies build plain, in the
# dev profile and into the main target directory, so after `cargo test` most of them are
# already built (a release build of the whole tree took 8 min in CI; this takes under 2).
# Unoptimised targets run fewer executions per second, which a smoke run can afford. No
# AddressSanitizer here: long campaigns use `cargo +nightly fuzz run` (docs/FUZZING.md), which
# optimises, instruments everything and adds ASan.
#
#   scripts/fuzz-smoke.sh                          # every target, 10 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh e164 csv # chosen targets, 60 s each
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(discover_binary discover_json credential e164 registry_record registry_open vcard
        csv normalise gcs_decode private_evaluate private_delta)
fi
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}}

# One build for all targets; the runs below reuse it.
RUSTC_WRAPPER="$PWD/scripts/fuzz-rustc-wrapper.sh" \
    cargo build --locked --manifest-path fuzz/Cargo.toml --bins
total=0
for target in "${TARGETS[@]}"; do
    # A scratch copy of the seed corpus, so new inputs found here do not dirty the tree.
    scratch=$(mktemp -d)
    cp fuzz/corpus/"${target}"/* "${scratch}/"
    mkdir -p fuzz/artifacts/"${target}"
    # libFuzzer exits non-zero on a crash; PIPESTATUS keeps that visible through the filter.
    set +e
    "${CARGO_TARGET_DIR}/debug/${target}" "${scratch}" \
        -max_total_time="${FUZZ_SECONDS}" -rss_limit_mb=1024 -print_final_stats=1 \
        -artifact_prefix=fuzz/artifacts/"${target}"/ 2> "${scratch}.log"
    status=$?
    set -e
    runs=$(grep -oE "^stat::number_of_executed_units: [0-9]+" "${scratch}.log" | grep -oE "[0-9]+$" || echo 0)
    echo "fuzz ${target}: ${FUZZ_SECONDS} s, ${runs} executions, exit ${status}" >&2
    if [ "${status}" -ne 0 ]; then
        grep -E "ERROR|panicked|SUMMARY|Test unit|artifact" "${scratch}.log" >&2 || true
        echo "fuzz ${target}: FAILED (input saved under fuzz/artifacts/${target}/)" >&2
        rm -rf "${scratch}" "${scratch}.log"
        exit "${status}"
    fi
    rm -rf "${scratch}" "${scratch}.log"
    total=$((total + runs))
done
echo "fuzz smoke: ${#TARGETS[@]} targets, ${FUZZ_SECONDS} s each, ${total} executions, no findings" >&2
