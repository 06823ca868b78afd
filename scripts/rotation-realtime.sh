#!/usr/bin/env bash
# Epoch rotation under load in real time (not in CI: it takes DURATION seconds): the release
# server with 60 s epochs and a generated registry, `contact-discovery loadgen` sending discovery
# requests across at least two rotations. loadgen follows the protocol (on 410 it refetches the
# epoch and sends the request again), so every request must end in 200. Prints the loadgen
# report's key fields and exits non-zero on any failed request or fewer than two rotations.
#
#   scripts/rotation-realtime.sh                          # 150 s, 1,000,000 registered, 200 req/s
#   DURATION=200 RATE=500 scripts/rotation-realtime.sh
#   BIN=target/release/contact-discovery scripts/rotation-realtime.sh   # no build
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-150}
EPOCH=${EPOCH:-60}
GRACE=${GRACE:-10}
REGISTRY=${REGISTRY:-1000000}
RATE=${RATE:-200}
PORT=${PORT:-18180}
ADMIN_PORT=${ADMIN_PORT:-19190}
OUT=${OUT:-rotation-loadgen.json}

if [ -z "${BIN:-}" ]; then
    cargo build --release --locked --quiet
    BIN=${CARGO_TARGET_DIR:-target}/release/contact-discovery
fi
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "${SERVER_PID}" ] && kill "${SERVER_PID}" 2>/dev/null || true
    rm -rf "${WORK}"
}
trap cleanup EXIT

"${BIN}" registry generate --count "${REGISTRY}" --seed 1 > "${WORK}/registry.txt"
"${BIN}" registry import --data-dir "${WORK}/data" "${WORK}/registry.txt" >&2
"${BIN}" serve --data-dir "${WORK}/data" --listen "127.0.0.1:${PORT}" \
    --admin-listen "127.0.0.1:${ADMIN_PORT}" \
    --epoch-seconds "${EPOCH}" --epoch-grace-seconds "${GRACE}" \
    --rate-limit-burst 1000000000 --rate-limit-refill-per-day 1000000000 \
    --max-batch 50000 --log info 2> "${WORK}/server.log" &
SERVER_PID=$!
for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:${PORT}/readyz" > /dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:${PORT}/readyz" > /dev/null || { cat "${WORK}/server.log" >&2; exit 1; }

echo "loadgen: ${DURATION} s at ${RATE} requests/s, epochs of ${EPOCH} s (grace ${GRACE} s)" >&2
"${BIN}" loadgen --server "http://127.0.0.1:${PORT}" --data-dir "${WORK}/data" \
    --registry-seed 1 --registry-size "${REGISTRY}" --rate "${RATE}" \
    --batch lognormal:300:1.0 --duration "${DURATION}s" --json > "${OUT}"

python3 - "${OUT}" "${WORK}/server.log" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
builds = sum(1 for line in open(sys.argv[2]) if "index built" in line)
rotations = report["final_epoch"] - report["first_epoch"]
print(f"epochs {report['first_epoch']} -> {report['final_epoch']} ({rotations} rotations), "
      f"index builds logged {builds}")
print(f"requests scheduled {report['scheduled']}, ok {report['ok']}, errors {report['errors']}, "
      f"statuses {report['statuses']}, resent after 410 {report['resent_after_410']}")
print(f"latency ms {report['latency_ms']}")
failed = report["errors"] > 0 or report["ok"] != report["scheduled"] or rotations < 2
print("FAILED" if failed else "rotation under load: 0 failed requests")
sys.exit(1 if failed else 0)
EOF
