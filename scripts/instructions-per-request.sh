#!/usr/bin/env bash
# Instructions the server executes per discovery request (valgrind's callgrind), for comparing
# two builds where CPU time is too noisy (this VM's spread is ±15 % run to run; instruction
# counts repeat to within 0.5 %). Counts only while the load runs: start-up and the index build
# are not instrumented. The load generator is always this script's LOADGEN (default: BINARY).
#
#   scripts/instructions-per-request.sh BINARY [BATCH]
#   # REGISTRY=100000 DURATION=10s; needs valgrind (Debian's package) and curl
set -euo pipefail
BIN=$1 BATCH=${2:-1000}
REGISTRY=${REGISTRY:-100000} DURATION=${DURATION:-10s} LOADGEN=${LOADGEN:-$BIN}
PORT=${PORT:-18390} ADMIN_PORT=${ADMIN_PORT:-19390}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$LOADGEN" registry generate --count "$REGISTRY" --seed 1 \
    | "$LOADGEN" registry import - --data-dir "$WORK/data" > /dev/null 2>&1
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
    "$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --rate-limit-burst 4000000000 \
    --rate-limit-refill-per-day 4000000000 --log warn 2> "$WORK/server.log" &
pid=$!
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.5; done
callgrind_control -i on "$pid" > /dev/null
"$LOADGEN" loadgen --server "http://127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --registry-size "$REGISTRY" --duration "$DURATION" --users 10 --closed --max-in-flight 1 \
    --batch "$BATCH" --json > "$WORK/load.json"
callgrind_control -i off "$pid" > /dev/null
kill -TERM "$pid"; wait "$pid" || true
ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$WORK/load.json")
ir=$(grep -o 'Collected : [0-9]*' "$WORK/server.log" | awk '{print $3}')
echo "$BIN batch $BATCH: $ok requests, $ir instructions, $((ir / ok)) per request"
