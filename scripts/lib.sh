# Shared by the measurement scripts (soak.sh, rotation-realtime.sh): source it, do not run it.
#
#   prepare_run REGISTRY   sets BIN (built unless given), WORK (removed on exit, with any server
#                          and background jobs), and imports REGISTRY generated numbers (seed 1)
#                          into $WORK/data; the numbers are left in $WORK/registry.txt
#   start_server PORT ADMIN_PORT [serve flags...]
#                          starts `serve` on $WORK/data with unlimited rate limits, log in
#                          $WORK/server.log, sets SERVER_PID, and waits until /readyz is 200

prepare_run() {
    # BIN=path/to/contact-discovery skips the build and uses that binary.
    if [ -z "${BIN:-}" ]; then
        cargo build --release --locked --quiet
        BIN=${CARGO_TARGET_DIR:-target}/release/contact-discovery
    fi
    WORK=$(mktemp -d)
    SERVER_PID=
    trap _cleanup_run EXIT
    echo "generating and importing $1 registered numbers" >&2
    "${BIN}" registry generate --count "$1" --seed 1 > "${WORK}/registry.txt"
    "${BIN}" registry import --data-dir "${WORK}/data" "${WORK}/registry.txt" >&2
}

_cleanup_run() {
    [ -n "${SERVER_PID}" ] && kill "${SERVER_PID}" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "${WORK}"
}

start_server() {
    local port=$1 admin_port=$2
    shift 2
    "${BIN}" serve --data-dir "${WORK}/data" --listen "127.0.0.1:${port}" \
        --admin-listen "127.0.0.1:${admin_port}" \
        --rate-limit-burst 1000000000 --rate-limit-refill-per-day 1000000000 \
        "$@" 2> "${WORK}/server.log" &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:${port}/readyz" > /dev/null && return 0
        sleep 0.1
    done
    cat "${WORK}/server.log" >&2
    return 1
}
