#!/usr/bin/env bash
# Side by side on this machine, pinned: this service, then Redis SMISMEMBER on the same
# fingerprints and batches, each server on one core (SERVER_CORE, default 0) and the load
# generator on another (LOAD_CORE, default 1), so the server's CPU per request is not shared
# with the generator's. For each batch size (BATCHES: 10, 1000 and an address-book-like
# lognormal:300:1.0 by default) and each of RUNS runs it records the server's CPU time around
# the run (/proc/<pid>/stat: the service's pid, then redis-server's) and prints one table of
# medians: server CPU ns per fingerprint and µs per request for both, throughput and latency.
# Not part of CI; see docs/BENCHMARKS.md.
#
#   USERS=10000000 CONNS=8 DURATION=15s RUNS=3 scripts/bench-redis.sh
#   USERS=1000000 DURATION=3s RUNS=1 EXTRAS=0 scripts/bench-redis.sh     # a quick check
#
# ENCODING=json measures the service's JSON encoding instead of binary. EXTRAS=1 (the default)
# also runs the open loop at 70 % of the binary maximum at OPEN_LOOP_BATCH (default 1000) and the
# in-process index bench (criterion). Needs redis-server (Debian: apt-get install -y
# redis-server), taskset (util-linux) and python3 (for the table).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-10000000}
BATCHES=${BATCHES:-10 1000 lognormal:300:1.0}
CONNS=${CONNS:-8}
DURATION=${DURATION:-15s}
RUNS=${RUNS:-3}
ENCODING=${ENCODING:-binary}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
EXTRAS=${EXTRAS:-1}
OPEN_LOOP_BATCH=${OPEN_LOOP_BATCH:-1000}
# Set RESULTS=dir to keep every run's JSON report there.
RESULTS=${RESULTS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

for tool in redis-server taskset python3; do
	command -v "$tool" >/dev/null || {
		echo "$tool not found (redis-server: apt-get install -y redis-server)" >&2
		exit 1
	}
done
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
# A file name for a batch argument (lognormal:300:1.0 -> lognormal-300-1.0).
tag() { echo "${1//:/-}"; }

echo "== registry of $USERS synthetic numbers (seed 1)" >&2
"$BIN" registry generate --count "$USERS" --seed 1 | "$BIN" registry import - --data-dir "$WORK/data" >&2

echo "== starting the service and redis-server on core $SERVER_CORE, loopback" >&2
# Load tests need a budget far above any real user's: every run mints 1,000 users.
taskset -c "$SERVER_CORE" "$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PUBLIC" \
	--admin-listen "127.0.0.1:$ADMIN" --rate-limit-burst 4000000000 \
	--rate-limit-refill-per-day 4000000000 --log warn &
SERVER=$!
# Redis idles while the service is measured and the other way round (the service only answers
# the generator's one GET /v1/epoch per Redis run).
taskset -c "$SERVER_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
	--appendonly no --logfile "$WORK/redis.log" &
REDIS=$!
for _ in $(seq 600); do
	curl -fsS "http://127.0.0.1:$PUBLIC/readyz" >/dev/null 2>&1 && break
	sleep 0.5
done
curl -fsS "http://127.0.0.1:$PUBLIC/readyz" >/dev/null

loadgen() { taskset -c "$LOAD_CORE" "$BIN" loadgen "$@"; }
common=(--server "http://127.0.0.1:$PUBLIC" --data-dir "$WORK/data" --registry-size "$USERS"
	--duration "$DURATION" --users 1000 --max-in-flight "$CONNS" --json)
uptime >"$WORK/uptime-before"
for run in $(seq "$RUNS"); do
	for batch in $BATCHES; do
		echo "== run $run/$RUNS, service, batch $batch" >&2
		loadgen "${common[@]}" --batch "$batch" --closed --encoding "$ENCODING" \
			--server-pid "$SERVER" >"$WORK/service-$(tag "$batch")-$run.json"
	done
	for batch in $BATCHES; do
		echo "== run $run/$RUNS, Redis, batch $batch" >&2
		loadgen "${common[@]}" --batch "$batch" --redis "127.0.0.1:$REDIS_PORT" \
			--server-pid "$REDIS" >"$WORK/redis-$(tag "$batch")-$run.json"
	done
done
uptime >"$WORK/uptime-after"
touch "$WORK/inproc.txt"
if [ "$EXTRAS" = 1 ] && [ -n "$OPEN_LOOP_BATCH" ]; then
	# p99 at 70 % of the measured closed-loop maximum at OPEN_LOOP_BATCH, open loop.
	MAX_RPS=$(python3 - "$WORK" "$RUNS" "$(tag "$OPEN_LOOP_BATCH")" <<'EOF'
import json, statistics, sys
work, runs, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(statistics.median(json.load(open(f"{work}/service-{tag}-{r}.json"))["requests_per_s"]
                        for r in range(1, runs + 1)))
EOF
	)
	RATE=$(python3 -c "print(round(0.7 * $MAX_RPS))")
	echo "== open loop at $RATE requests/s (70 % of $MAX_RPS), batch $OPEN_LOOP_BATCH" >&2
	loadgen "${common[@]}" --batch "$OPEN_LOOP_BATCH" --rate "$RATE" --max-in-flight 4096 \
		--encoding "$ENCODING" --server-pid "$SERVER" >"$WORK/open70.json"
fi
kill "$SERVER" "$REDIS"
wait "$SERVER" "$REDIS" 2>/dev/null || true
SERVER=""
REDIS=""
if [ "$EXTRAS" = 1 ]; then
	echo "== in-process index (criterion, core $SERVER_CORE)" >&2
	cargo bench --locked --bench discovery --no-run 2>/dev/null
	CD_BENCH_USERS=$USERS taskset -c "$SERVER_CORE" cargo bench --locked --bench discovery -- \
		'lookup/match_index' 2>/dev/null | tee "$WORK/inproc.txt" >&2 || true
fi

python3 - "$WORK" "$RUNS" "$USERS" "$CONNS" "$ENCODING" "$BATCHES" <<'EOF'
import json, os, re, statistics, sys
work, runs, users, conns, encoding, batches = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def reports(kind, batch):
    tag = batch.replace(":", "-")
    return [json.load(open(f"{work}/{kind}-{tag}-{r}.json")) for r in range(1, runs + 1)]
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")
def row(j, kind):
    # The service reports answered requests as `ok`, the Redis run as `requests`.
    requests = j["ok"] if kind == "service" else j["requests"]
    fingerprints = j["fingerprints_answered"] if kind == "service" else j["fingerprints"]
    cpu = j["server_cpu_s"]
    return {
        "ns_fp": None if cpu is None else cpu * 1e9 / max(fingerprints, 1),
        "us_req": None if cpu is None else cpu * 1e6 / max(requests, 1),
        "fps": j["fingerprints_per_s"],
        "rps": j["requests_per_s"],
        "p50": j["latency_ms"]["p50"],
        "p99": j["latency_ms"]["p99"],
        "errors": j.get("errors", 0),
    }
print(f"users {users}, {conns} connections, service encoding {encoding}, medians of {runs} runs")
print("servers pinned to one core, the load generator to another")
print(f"load before: {open(work + '/uptime-before').read().strip()}")
print(f"load after:  {open(work + '/uptime-after').read().strip()}")
print()
print("| batch | target | server CPU ns/fingerprint | server CPU µs/request | fingerprints/s | requests/s | p50 ms | p99 ms | CPU per request vs Redis |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for batch in batches.split():
    rows = {kind: [row(j, kind) for j in reports(kind, batch)] for kind in ("service", "redis")}
    m = {kind: {k: med([r[k] for r in rs]) for k in rs[0]} for kind, rs in rows.items()}
    for kind, name in (("service", f"service, {encoding}"), ("redis", "Redis SMISMEMBER")):
        x = m[kind]
        ratio = m["redis"]["us_req"] / x["us_req"] if x["us_req"] else float("nan")
        print(f"| {batch} | {name} | {x['ns_fp']:.1f} | {x['us_req']:.2f} | {x['fps']:,.0f} | "
              f"{x['rps']:,.0f} | {x['p50']:.3f} | {x['p99']:.3f} | {ratio:.2f}x |")
text = open(f"{work}/inproc.txt").read()
found = re.search(r"thrpt:\s*\[\S+ \S+ (\S+) (\S)elem/s", text)
if found:
    inproc = float(found.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9}.get(found.group(2), 1)
    print(f"\nin-process index (criterion, one core): {inproc:,.0f} fingerprints/s")
if os.path.exists(f"{work}/open70.json"):
    o = json.load(open(f"{work}/open70.json"))
    print(f"\nopen loop at {o['target_rate']:.0f} requests/s (70 % of max): "
          f"p50 {o['latency_ms']['p50']:.3f} ms, p99 {o['latency_ms']['p99']:.3f} ms, "
          f"p99.9 {o['latency_ms']['p99.9']:.3f} ms, errors {o['errors']}, "
          f"server CPU {o['server_cpu_ns_per_fingerprint'] or 0:.1f} ns/fingerprint")
EOF
