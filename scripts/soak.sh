#!/usr/bin/env bash
# Soak run (not in CI): the release server with a generated registry under steady discovery load
# for DURATION seconds (default 600), resident memory sampled every 10 s into a CSV. Reports the
# first, last and largest sample. Uses `contact-discovery loadgen` when the binary has it,
# otherwise parallel loops of the `discover` CLI over a generated address book.
#
#   scripts/soak.sh                 # 10 minutes, 1,000,000 registered numbers
#   DURATION=60 REGISTRY=100000 scripts/soak.sh
#   BIN=target/release/contact-discovery scripts/soak.sh   # no build
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
REGISTRY=${REGISTRY:-1000000}
WORKERS=${WORKERS:-4}
BOOK=${BOOK:-5000}
OUT=${OUT:-soak-rss.csv}
PORT=${PORT:-18080}
RATE=${RATE:-200}
LOADGEN_OUT=${LOADGEN_OUT:-soak-loadgen.json}
ADMIN_PORT=${ADMIN_PORT:-19090}

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
prepare_run "${REGISTRY}"
# Half the address book registered, half not (a different seed).
{
    echo "Name,Phone 1 - Type,Phone 1 - Value"
    head -n $((BOOK / 2)) "${WORK}/registry.txt" | awk '{print "R" NR ",Mobile," $1}'
    "${BIN}" registry generate --count $((BOOK / 2)) --seed 2 | awk '{print "U" NR ",Mobile," $1}'
} > "${WORK}/book.csv"

start_server "${PORT}" "${ADMIN_PORT}" --log warn
CREDENTIAL=$("${BIN}" credential --user soak --ttl 2h --data-dir "${WORK}/data")

END=$(( $(date +%s) + DURATION ))
LOAD_PIDS=
if "${BIN}" loadgen --help > /dev/null 2>&1; then
    echo "using contact-discovery loadgen" >&2
    LOAD="contact-discovery loadgen at ${RATE} requests/s, batches lognormal:300:1.0"
    "${BIN}" loadgen --server "http://127.0.0.1:${PORT}" --data-dir "${WORK}/data" \
        --registry-seed 1 --registry-size "${REGISTRY}" --rate "${RATE}" \
        --batch lognormal:300:1.0 --duration "${DURATION}s" --json > "${LOADGEN_OUT}" 2>&1 &
    LOAD_PIDS=$!
else
    LOAD="${WORKERS} parallel discover CLI loops over ${BOOK} contacts"
    echo "loadgen not available; using ${LOAD}" >&2
    for w in $(seq 1 "${WORKERS}"); do
        (
            n=0
            while [ "$(date +%s)" -lt "${END}" ]; do
                if [ $((w % 2)) -eq 0 ]; then enc=json; else enc=binary; fi
                "${BIN}" discover --server "http://127.0.0.1:${PORT}" --credential "${CREDENTIAL}" \
                    --contacts "${WORK}/book.csv" --encoding "${enc}" --json > /dev/null \
                    || echo "discover failed" >> "${WORK}/failures"
                n=$((n + 1))
            done
            echo "${n}" > "${WORK}/runs-${w}"
        ) &
        LOAD_PIDS="${LOAD_PIDS:-} $!"
    done
fi

echo "seconds,rss_kib" > "${OUT}"
START=$(date +%s)
while [ "$(date +%s)" -lt "${END}" ]; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/${SERVER_PID}/status")
    echo "$(( $(date +%s) - START )),${rss}" >> "${OUT}"
    sleep 10
done
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/${SERVER_PID}/status")
echo "$(( $(date +%s) - START )),${rss}" >> "${OUT}"
# shellcheck disable=SC2086  # a list of pids
wait ${LOAD_PIDS} 2>/dev/null || true

runs=$(cat "${WORK}"/runs-* 2>/dev/null | awk '{s+=$1} END {print s+0}' || true)
failures=$( [ -f "${WORK}/failures" ] && wc -l < "${WORK}/failures" || echo 0)
requests=$(curl -s "http://127.0.0.1:${ADMIN_PORT}/metrics" -H "Authorization: Bearer $(cat "${WORK}/data/metrics.token")" \
    | awk '/^[a-z_]*http_requests_total/ && /discover/ && /status="200"/ {s+=$NF} END {print s+0}' \
    || true)
awk -F, -v load="${LOAD}" -v runs="${runs}" -v failures="${failures}" -v requests="${requests}" '
    NR == 2 { first = $2 }
    NR > 1 { last = $2; if ($2 > max) max = $2; n++ }
    END {
        printf "soak: %d samples over the run; load: %s\n", n, load
        printf "rss KiB: first %d, last %d, max %d (last/first %.2f)\n", first, last, max, last / first
        printf "discover CLI runs %s (0 when loadgen drove the load), 200 discover responses %s, failed CLI runs %s\n", runs, requests, failures
    }' "${OUT}"
[ -s "${LOADGEN_OUT}" ] && echo "loadgen report: ${LOADGEN_OUT}"
