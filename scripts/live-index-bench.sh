#!/usr/bin/env bash
# Issue 13's figures for the live match index, on a registry of USERS numbers generated with
# --seed 1 (a copy is used; the original is not changed). The service is pinned to core 0
# (SERVER_CPUS), the load generator to core 1 (LOAD_CPUS); every change is polled until visible.
#
# Phase 1, steady (one-day epochs, no grace: no index is built during the runs):
#   alone / with_changes   closed loop, 32 in flight, batch 1000; "with" adds 1,000 changes/s
#                          (10 a request, mix 2:1:1); run twice, alternating
#   changes_batched        5,000 changes/s, 50 a request, discovery at 1 request/s
#   changes_single         1,000 changes/s, one a request
# Phase max_changes (not run by default): 5,000 changes/s for LONG_DURATION (long enough for
# the registry's overlay folds, every 262,144 changed numbers), then 20,000 changes/s, 100 a
# request.
# Phase 2, rotation (EPOCH_ROT-second epochs): discovery at 200 requests/s and 1,000 changes/s
#   for ROT_DURATION, through next-epoch builds and boundaries; VmHWM at the end.
# Per run: the server's CPU seconds (utime+stime from /proc) and the loadgen report's figures.
#
#   scripts/live-index-bench.sh BINARY DATA_DIR USERS
#   # DURATION=30s EPOCH_ROT=120 GRACE_ROT=20 ROT_DURATION=150s PHASES="steady rotation" OUT=dir
set -euo pipefail
BIN=$(realpath "$1") SRC=$2 USERS=$3
DURATION=${DURATION:-30s} EPOCH_ROT=${EPOCH_ROT:-120} GRACE_ROT=${GRACE_ROT:-20}
ROT_DURATION=${ROT_DURATION:-150s} LONG_DURATION=${LONG_DURATION:-120s} PHASES=${PHASES:-"steady rotation"}
SERVER_CPUS=${SERVER_CPUS:-0} LOAD_CPUS=${LOAD_CPUS:-1}
PORT=${PORT:-18490} ADMIN_PORT=${ADMIN_PORT:-19490}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
WORK=$(mktemp -d -p "$(dirname "$(realpath "$SRC")")")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

start() { # EPOCH GRACE NAME
    rm -rf "$WORK/data"; cp -r "$SRC" "$WORK/data"; sync
    taskset -c "$SERVER_CPUS" "$BIN" serve --data-dir "$WORK/data" \
        --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        --epoch-seconds "$1" --epoch-grace-seconds "$2" --max-batch 1000 \
        --rate-limit-burst 4000000000 --rate-limit-refill-per-day 4000000000 \
        --log info 2> "$OUT/server-$3.log" &
    pid=$!
    local t0; t0=$(date +%s.%N)
    until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.2; done
    echo "[$3] ready after $(echo "$(date +%s.%N) - $t0" | bc) s, VmRSS $(awk '/VmRSS/{print $2}' /proc/$pid/status) kB"
}
stop() { # NAME
    echo "[$1] VmHWM $(awk '/VmHWM/{print $2}' /proc/$pid/status) kB, VmRSS $(awk '/VmRSS/{print $2}' /proc/$pid/status) kB," \
        "index builds: $(grep -c 'match index built' "$OUT/server-$1.log" || true)"
    grep 'match index built' "$OUT/server-$1.log" | sed 's/^/    /' || true
    kill -TERM "$pid"; wait "$pid" || true
}
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
run() { # NAME DURATION loadgen-args...
    local name=$1 duration=$2; shift 2
    local before after
    before=$(cpu)
    taskset -c "$LOAD_CPUS" "$BIN" loadgen --server "http://127.0.0.1:$PORT" \
        --admin-server "http://127.0.0.1:$ADMIN_PORT" --data-dir "$WORK/data" \
        --registry-size "$USERS" --duration "$duration" --users 1000 --json "$@" > "$OUT/$name.json"
    after=$(cpu)
    python3 - "$OUT/$name.json" "$name" "$before" "$after" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
name, cpu = sys.argv[2], (float(sys.argv[4]) - float(sys.argv[3])) / 100
secs = r["elapsed_s"]
line = f"{name}: server CPU {cpu:.1f} s ({100 * cpu / secs:.0f} % of a core over {secs:.0f} s)"
line += f"; discovery {r['requests_per_s']:.0f} req/s, {r['fingerprints_per_s'] / 1e6:.2f} M fp/s"
line += f", p99 {r['latency_ms']['p99']} ms"
c = r.get("changes")
if c:
    line += (f"; changes sent {c['sent']} acked {c['acknowledged']} visible {c['visible']}"
             f" never {c['never_visible']}; admin ms {c['admin_latency_ms']}"
             f"; change->visible ms {c['visible_latency_ms']}")
print(line)
PY
}
closed=(--closed --max-in-flight 32 --batch 1000)
changes=(--change-rate 1000 --changes-per-request 10)
for phase in $PHASES; do
    case $phase in
    steady)
        start 86400 0 steady
        for round in 1 2; do
            run "alone-$round" "$DURATION" "${closed[@]}"
            run "with_changes-$round" "$DURATION" "${closed[@]}" "${changes[@]}"
        done
        run changes_batched "$DURATION" --rate 1 --batch 10 --change-rate 5000 --changes-per-request 50
        run changes_single "$DURATION" --rate 1 --batch 10 --change-rate 1000 --changes-per-request 1
        stop steady ;;
    max_changes)
        start 86400 0 max_changes
        run changes_5000_long "$LONG_DURATION" --rate 1 --batch 10 --change-rate 5000 --changes-per-request 50
        run changes_20000 "$DURATION" --rate 1 --batch 10 --change-rate 20000 --changes-per-request 100
        stop max_changes ;;
    rotation)
        start "$EPOCH_ROT" "$GRACE_ROT" rotation
        run rotation "$ROT_DURATION" --rate 200 --batch 1000 "${changes[@]}"
        stop rotation ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
    esac
done
