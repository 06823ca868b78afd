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

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
prepare_run "${REGISTRY}"
start_server "${PORT}" "${ADMIN_PORT}" --epoch-seconds "${EPOCH}" \
    --epoch-grace-seconds "${GRACE}" --max-batch 50000 --log info

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
