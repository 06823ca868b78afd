#!/usr/bin/env bash
# Two release binaries side by side on one registry: the server pinned to core 0, the load
# generator (always NEW's `loadgen`) to core 1, alternating OLD and NEW for ROUNDS rounds, each
# `loadgen --closed` at every batch size in BATCHES. Prints one line per run: binary, batch,
# requests/s, server CPU µs per request and ns per fingerprint, p50/p99 ms.
#
#   scripts/compare-binaries.sh OLD_BINARY NEW_BINARY
#   # ROUNDS=3 BATCHES="10 1000" REGISTRY=1000000 DURATION=8s IN_FLIGHT=8
#   # OLD_ENV / NEW_ENV: a VAR=value for that server only (e.g. the same test-hooks build with
#   # and without CONTACT_DISCOVERY_NO_WIPE_ON_FREE=1)
set -euo pipefail
OLD=$1 NEW=$2
ROUNDS=${ROUNDS:-3} BATCHES=${BATCHES:-"10 1000"} REGISTRY=${REGISTRY:-1000000}
DURATION=${DURATION:-8s} IN_FLIGHT=${IN_FLIGHT:-8} PORT=${PORT:-18280} ADMIN_PORT=${ADMIN_PORT:-19280}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$NEW" registry generate --count "$REGISTRY" --seed 1 | "$NEW" registry import - --data-dir "$WORK/data" >&2
cat > "$WORK/line.py" <<'PY'
import json, sys
r = json.load(sys.stdin)
which, rnd, batch = sys.argv[1:4]
us = r["server_cpu_s"] * 1e6 / max(r["ok"], 1)
lat = r["latency_ms"]
print(f"{which} round {rnd} batch {batch:>5}: {r['requests_per_s']:>9.0f} req/s, "
      f"{us:6.2f} us CPU/request, {r['server_cpu_ns_per_fingerprint']:7.1f} ns/fp, "
      f"p50 {lat['p50']} p99 {lat['p99']} ms, errors {r['errors']}")
PY
for round in $(seq 1 "$ROUNDS"); do
    for which in old new; do
        bin=$OLD; [ "$which" = new ] && bin=$NEW
        env_of=${OLD_ENV:-}; [ "$which" = new ] && env_of=${NEW_ENV:-}
        # shellcheck disable=SC2086  # an optional VAR=value
        env $env_of taskset -c 0 "$bin" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
            --admin-listen "127.0.0.1:$ADMIN_PORT" --rate-limit-burst 4000000000 \
            --rate-limit-refill-per-day 4000000000 --log warn 2> "$WORK/server.log" &
        pid=$!
        until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.1; done
        for batch in $BATCHES; do
            taskset -c 1 "$NEW" loadgen --server "http://127.0.0.1:$PORT" --data-dir "$WORK/data" \
                --registry-size "$REGISTRY" --duration "$DURATION" --users 1000 --closed \
                --max-in-flight "$IN_FLIGHT" --batch "$batch" --server-pid "$pid" --json \
                | python3 "$WORK/line.py" "$which" "$round" "$batch"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
