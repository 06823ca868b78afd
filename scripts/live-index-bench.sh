#!/usr/bin/env bash
# Issue 13's figures for the live match index, on a registry of USERS numbers generated with
# --seed 1: the service pinned to core 0 (SERVER_CPUS), the load generator to core 1 (LOAD_CPUS).
# Runs, each against the same server:
#   discovery_alone        closed loop, 32 in flight, batch 1000
#   discovery_with_changes the same while 1,000 changes/s apply (10 a request, mix 2:1:1)
#   changes_batched        5,000 changes/s, 50 a request, discovery at 1 request/s
#   changes_single         1,000 changes/s, one a request
# and prints, per run, the server's CPU seconds (utime+stime from /proc), the loadgen report's
# key figures, and the process's VmHWM at the end. Every change is polled until visible.
#
#   scripts/live-index-bench.sh BINARY DATA_DIR USERS
#   # EPOCH=180 GRACE=30 DURATION=30s RUNS="discovery_alone ..." OUT=dir
set -euo pipefail
BIN=$(realpath "$1") SRC=$2 USERS=$3
EPOCH=${EPOCH:-180} GRACE=${GRACE:-30} DURATION=${DURATION:-30s}
SERVER_CPUS=${SERVER_CPUS:-0} LOAD_CPUS=${LOAD_CPUS:-1}
RUNS=${RUNS:-"discovery_alone discovery_with_changes changes_batched changes_single"}
PORT=${PORT:-18490} ADMIN_PORT=${ADMIN_PORT:-19490}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
WORK=$(mktemp -d -p "$(dirname "$(realpath "$SRC")")")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cp -r "$SRC" "$WORK/data"
taskset -c "$SERVER_CPUS" "$BIN" serve --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --epoch-seconds "$EPOCH" --epoch-grace-seconds "$GRACE" --max-batch 1000 \
    --rate-limit-burst 4000000000 --rate-limit-refill-per-day 4000000000 \
    --log warn 2> "$OUT/server.log" &
pid=$!
started=$(date +%s.%N)
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.2; done
echo "ready after $(echo "$(date +%s.%N) - $started" | bc) s, VmRSS $(awk '/VmRSS/{print $2}' /proc/$pid/status) kB"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
load() {
    taskset -c "$LOAD_CPUS" "$BIN" loadgen --server "http://127.0.0.1:$PORT" \
        --admin-server "http://127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/data" \
        --registry-size "$USERS" --duration "$DURATION" --users 1000 --json "$@"
}
for run in $RUNS; do
    case $run in
        discovery_alone) args=(--closed --max-in-flight 32 --batch 1000) ;;
        discovery_with_changes) args=(--closed --max-in-flight 32 --batch 1000 \
            --change-rate 1000 --changes-per-request 10) ;;
        changes_batched) args=(--rate 1 --batch 10 --change-rate 5000 --changes-per-request 50) ;;
        changes_single) args=(--rate 1 --batch 10 --change-rate 1000 --changes-per-request 1) ;;
        *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    before=$(cpu)
    load "${args[@]}" > "$OUT/$run.json"
    after=$(cpu)
    python3 - "$OUT/$run.json" "$run" "$before" "$after" "$DURATION" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
run, cpu = sys.argv[2], (float(sys.argv[4]) - float(sys.argv[3])) / 100
secs = r.get("duration_s") or float(sys.argv[5].rstrip("s"))
line = f"{run}: server CPU {cpu:.1f} s ({100 * cpu / secs:.0f} % of a core over {secs:.0f} s)"
line += f"; discovery {r.get('requests_per_s', 0):.0f} req/s, {r.get('fingerprints_per_s', 0):.0f} fp/s"
c = r.get("changes")
if c:
    line += (f"; changes sent {c['sent']} acked {c['acknowledged']} visible {c['visible']}"
             f" never {c['never_visible']}; admin ms {c['admin_latency_ms']}"
             f"; change->visible ms {c['visible_latency_ms']}")
print(line)
PY
done
echo "VmHWM $(awk '/VmHWM/{print $2}' /proc/$pid/status) kB, VmRSS $(awk '/VmRSS/{print $2}' /proc/$pid/status) kB"
grep -c "match index built" "$OUT/server.log" | sed 's/^/index builds logged: /' || true
