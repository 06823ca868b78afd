#!/usr/bin/env bash
# Side by side on this machine, in one run: this service (binary and JSON), Redis SMISMEMBER on
# the same fingerprints and batches with the same client concurrency, and the in-process index.
# Prints one table of medians over RUNS runs. Not part of CI; see docs/BENCHMARKS.md.
#
#   USERS=10000000 BATCH=1000 CONNS=8 DURATION=15s RUNS=3 scripts/bench-redis.sh
#
# Needs redis-server (Debian: apt-get install -y redis-server) and python3 (for the table).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-10000000}
BATCH=${BATCH:-1000}
CONNS=${CONNS:-8}
DURATION=${DURATION:-15s}
RUNS=${RUNS:-3}
# Set RESULTS=dir to keep every run's JSON report there.
RESULTS=${RESULTS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

command -v redis-server >/dev/null || {
	echo "redis-server not found: apt-get install -y redis-server" >&2
	exit 1
}
cargo build --release --locked --bin contact-discovery
BIN=$CARGO_TARGET_DIR/release/contact-discovery

WORK=$(mktemp -d)
SERVER=""
REDIS=""
cleanup() {
	if [ -n "$RESULTS" ]; then
		mkdir -p "$RESULTS"
		cp "$WORK"/*.json "$WORK"/*.txt "$WORK"/uptime-* "$RESULTS"/ 2>/dev/null || true
	fi
	[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
	[ -n "$REDIS" ] && kill "$REDIS" 2>/dev/null && wait "$REDIS" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PUBLIC=$(free_port)
ADMIN=$(free_port)
REDIS_PORT=$(free_port)

echo "== registry of $USERS synthetic numbers (seed 1)" >&2
"$BIN" registry generate --count "$USERS" --seed 1 | "$BIN" registry import - --data-dir "$WORK/data" >&2

echo "== starting the service and redis-server on loopback" >&2
# Load tests need a budget far above any real user's: every run mints 1,000 users.
"$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PUBLIC" --admin-listen "127.0.0.1:$ADMIN" \
	--max-batch "$BATCH" --rate-limit-burst 4000000000 --rate-limit-refill-per-day 4000000000 \
	--log warn &
SERVER=$!
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
	--logfile "$WORK/redis.log" &
REDIS=$!
for _ in $(seq 600); do
	curl -fsS "http://127.0.0.1:$PUBLIC/readyz" >/dev/null 2>&1 && break
	sleep 0.5
done
curl -fsS "http://127.0.0.1:$PUBLIC/readyz" >/dev/null

common=(--server "http://127.0.0.1:$PUBLIC" --data-dir "$WORK/data" --registry-size "$USERS"
	--batch "$BATCH" --duration "$DURATION" --users 1000 --json)
uptime >"$WORK/uptime-before"
for run in $(seq "$RUNS"); do
	echo "== run $run/$RUNS" >&2
	"$BIN" loadgen "${common[@]}" --closed --max-in-flight "$CONNS" --encoding binary --server-pid "$SERVER" >"$WORK/binary-$run.json"
	"$BIN" loadgen "${common[@]}" --closed --max-in-flight "$CONNS" --encoding json --server-pid "$SERVER" >"$WORK/json-$run.json"
	"$BIN" loadgen "${common[@]}" --redis "127.0.0.1:$REDIS_PORT" --max-in-flight "$CONNS" --server-pid "$REDIS" >"$WORK/redis-$run.json"
done
# p99 at 70 % of the measured maximum (binary), open loop.
MAX_RPS=$(python3 -c "import json,statistics,sys; print(statistics.median(json.load(open(f'$WORK/binary-{r}.json'))['requests_per_s'] for r in range(1,$RUNS+1)))")
RATE=$(python3 -c "print(round(0.7 * $MAX_RPS))")
echo "== open loop at $RATE requests/s (70 % of $MAX_RPS)" >&2
"$BIN" loadgen "${common[@]}" --rate "$RATE" --max-in-flight 4096 --encoding binary --server-pid "$SERVER" >"$WORK/open70.json"
kill "$SERVER" "$REDIS"
wait "$SERVER" "$REDIS" 2>/dev/null || true
SERVER=""
REDIS=""

echo "== in-process index (criterion, same machine)" >&2
CD_BENCH_USERS=$USERS cargo bench --locked --bench discovery -- 'lookup/match_index' 2>/dev/null |
	tee "$WORK/inproc.txt" >&2 || true
uptime >"$WORK/uptime-after"

python3 - "$WORK" "$RUNS" "$USERS" "$BATCH" "$CONNS" <<'EOF'
import json, re, statistics, sys
work, runs, users, batch, conns = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def med(kind, key, sub=None):
    vals = []
    for r in range(1, runs + 1):
        j = json.load(open(f"{work}/{kind}-{r}.json"))
        v = j[key] if sub is None else j[key][sub]
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else float("nan")
inproc = float("nan")
text = open(f"{work}/inproc.txt").read()
m = re.search(r"thrpt:\s*\[\S+ \S+ (\S+) (\S)elem/s", text)
if m:
    inproc = float(m.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9}.get(m.group(2), 1)
b, js, rd = (med(k, "fingerprints_per_s") for k in ("binary", "json", "redis"))
open70 = json.load(open(f"{work}/open70.json"))
print(f"users {users}, batch {batch}, {conns} connections, medians of {runs} runs")
print(f"load before: {open(work + '/uptime-before').read().strip()}")
print(f"load after:  {open(work + '/uptime-after').read().strip()}")
print()
print("| target | fingerprints/s | server CPU ns/fingerprint | p50 ms | p99 ms | vs Redis |")
print("|---|---:|---:|---:|---:|---:|")
for name, kind, fps in (("service, binary", "binary", b), ("service, JSON", "json", js), ("Redis SMISMEMBER", "redis", rd)):
    print(f"| {name} | {fps:,.0f} | {med(kind, 'server_cpu_ns_per_fingerprint'):.1f} | "
          f"{med(kind, 'latency_ms', 'p50'):.3f} | {med(kind, 'latency_ms', 'p99'):.3f} | {fps / rd:.1f}x |")
print(f"| in-process index (1 core) | {inproc:,.0f} | | | | {inproc / rd:.1f}x |")
print()
print(f"open loop at {open70['target_rate']:.0f} requests/s (70 % of max): "
      f"p50 {open70['latency_ms']['p50']:.3f} ms, p99 {open70['latency_ms']['p99']:.3f} ms, "
      f"p99.9 {open70['latency_ms']['p99.9']:.3f} ms, errors {open70['errors']}, "
      f"server CPU {open70['server_cpu_ns_per_fingerprint'] or 0:.1f} ns/fingerprint")
EOF
