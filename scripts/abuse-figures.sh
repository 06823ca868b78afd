#!/usr/bin/env bash
# The attack figures of docs/RELIABILITY.md ("Hostile peers"), against the release binary:
#
#   1. slow readers: 3 connections with a 1 KiB receive buffer pipeline 40,000 `GET /healthz`
#      each and never read, against `--max-connections 3`; prints how many of them the server
#      still holds after the write deadline and how long a normal client waited for its answer;
#   2. the worst admin request: peak RSS (VmHWM) of the server before and after the largest
#      bodies the admin API takes (4 MiB of empty strings; 100,000 invalid numbers; 100,000 valid
#      numbers).
#
#   scripts/abuse-figures.sh     # WRITE_TIMEOUT_MS=2000 MAX_REQUESTS=4294967295; BIN= skips the build
set -euo pipefail
cd "$(dirname "$0")/.."
WRITE_TIMEOUT_MS=${WRITE_TIMEOUT_MS:-2000}
PORT=${PORT:-18180}
ADMIN_PORT=${ADMIN_PORT:-19190}

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
prepare_run 1000
# The request cap per connection (default 1,000) would end the slow readers before the write
# deadline does; MAX_REQUESTS=1000 measures the defaults, the default here the deadline alone.
start_server "${PORT}" "${ADMIN_PORT}" --log warn --max-connections 3 \
    --write-timeout-ms "${WRITE_TIMEOUT_MS}" \
    --max-requests-per-connection "${MAX_REQUESTS:-4294967295}"
TOKEN=$(cat "${WORK}/data/admin.token")

hwm() { awk '/^VmHWM:/ {print $2}' "/proc/${SERVER_PID}/status"; }

echo "== slow readers (write deadline ${WRITE_TIMEOUT_MS} ms, 3 connection slots)"
python3 - "${PORT}" "${WRITE_TIMEOUT_MS}" "${SERVER_PID}" <<'EOF'
import os, socket, sys, threading, time
port, deadline_ms, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
one = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
attack_started = time.monotonic()
attackers = []
for _ in range(3):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", port))
    attackers.append(s)
    threading.Thread(target=lambda s=s: s.sendall(one * 40_000), daemon=True).start()
time.sleep(0.5)

def established_to_server():
    # Server-side sockets of the listener that are still open (ESTABLISHED, local port = port).
    n = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.split(":")[1], 16) == port and state == "01":
            n += 1
    return n

held_before = established_to_server()
started = time.monotonic()
c = socket.create_connection(("127.0.0.1", port))
c.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
c.settimeout(60)
answer = c.recv(1024)
waited = time.monotonic() - started
c.close()
# Every stalled write has had its deadline (plus a second) by now.
time.sleep(max(0.0, attack_started + deadline_ms / 1000 + 1.0 - time.monotonic()))
held_after = established_to_server()
print(f"connections held by slow readers before the deadline: {held_before}")
print(f"a normal client was answered ({answer.split(b' ')[1].decode()}) after {waited:.2f} s")
print(f"connections held by slow readers one second after the deadline: {held_after}")
EOF

echo "== the worst admin requests (peak RSS, KiB)"
echo "at start: $(hwm)"
admin() {
    curl -s -o /dev/null -w '%{http_code} %{size_download} bytes' \
        "http://127.0.0.1:${ADMIN_PORT}/admin/v1/registrations" \
        -H "Authorization: Bearer ${TOKEN}" -H 'Content-Type: application/json' \
        --data-binary "@$1"
}
python3 -c 'import sys; n=(4*1024*1024-64)//3; sys.stdout.write("{\"add\":[" + "\"\","*(n-1) + "\"\"]}")' \
    > "${WORK}/empty.json"
echo "4 MiB of empty strings: $(admin "${WORK}/empty.json"), peak $(hwm)"
python3 -c 'import sys; sys.stdout.write("{\"add\":[" + ",".join("\"x%d\"" % i for i in range(100000)) + "]}")' \
    > "${WORK}/invalid.json"
echo "100,000 invalid numbers: $(admin "${WORK}/invalid.json"), peak $(hwm)"
python3 -c 'import sys; sys.stdout.write("{\"add\":[" + ",".join("\"+1555%07d\"" % i for i in range(100000)) + "]}")' \
    > "${WORK}/valid.json"
echo "100,000 valid numbers: $(admin "${WORK}/valid.json"), peak $(hwm)"
