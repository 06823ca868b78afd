#!/usr/bin/env bash
# The container image, built from deploy/Dockerfile and run: non-root, read-only root filesystem,
# its HEALTHCHECK healthy, a discovery answered inside it, SIGTERM draining a request in flight.
# scripts/test.sh runs it after `cargo test`; it also runs on its own.
#
# No image registry is reachable here, so the bases come from Debian's packages: the runtime
# base is glibc and libgcc (what distroless/cc holds) extracted by mmdebstrap and `docker
# import`ed; the image takes the test build of the binary (BINARY_FROM=prebuilt) instead of
# compiling it inside (a release build from nothing does not fit CI's time). The compile stage is
# built up to its cargo command only. Debian's docker.io daemon runs for this script alone, with
# its own data, exec root and socket under a temporary directory, and is stopped on exit.
#
# If that daemon cannot start or cannot run a container at all, the script prints
# `SKIPPED: container test: <reason>` and exits 0 (and appends the line to
# $CONTAINER_TEST_SKIP_REPORT if set, for scripts/test.sh's summary). Every other failure fails.
#
#   BIN=path/to/contact-discovery   the binary to put in the image (default: the test build,
#                                   target/debug/contact-discovery, built if stale); it must
#                                   be linked against glibc 2.36 (Debian 12) or older
# Cached between local runs: target/container/runtime-base.tar (the mmdebstrap output).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
CACHE=target/container
IMAGE=cd-test/contact-discovery:test
RUNTIME_BASE=cd-test/runtime-base:bookworm
NAME=cd-test-server
VOLUME=cd-test-data
# docker stop's grace period, as deploy/docker-compose.yml sets it: above the server's own drain
# timeout (30 s), so a server that drains exits by itself before it would be killed.
GRACE=40

# ---- phases and their times ------------------------------------------------------------------
phase_start=$(date +%s.%N)
phases=()
# Ends the phase running since the last call, named $1.
phase() {
    local now
    now=$(date +%s.%N)
    phases+=("$1 $(awk -v a="$phase_start" -v b="$now" 'BEGIN { printf "%.1f", b - a }') s")
    phase_start=$now
    echo "container test: $1 done" >&2
}
print_phases() {
    local joined
    joined=$(printf '%s, ' "${phases[@]}")
    echo "container test phases: ${joined%, }" >&2
}

TMP=
DOCKERD_STARTED=
KEY_JSON_EXISTED=$([ -e /etc/docker/key.json ] && echo yes || true)

skip() {
    local line="SKIPPED: container test: $*"
    printf '\n%s\n\n' "${line}" >&2
    if [ -n "${CONTAINER_TEST_SKIP_REPORT:-}" ]; then
        printf '%s\n' "${line}" >> "${CONTAINER_TEST_SKIP_REPORT}"
    fi
    exit 0
}

fail() {
    echo "container test FAILED: $*" >&2
    if [ -n "${DOCKERD_STARTED}" ]; then
        dk ps -a >&2 || true
        dk logs "${NAME}" 2>&1 | tail -40 >&2 || true
    fi
    exit 1
}

# The docker client of Debian's docker.io (20.10: BuildKit is built in, no buildx plugin needed),
# talking to this script's daemon only, with its own client configuration.
dk() {
    $SUDO env DOCKER_HOST="unix://${TMP}/docker.sock" DOCKER_BUILDKIT=1 \
        DOCKER_CONFIG="${TMP}/client" /usr/bin/docker "$@"
}

cleanup() {
    local status=$?
    [ -n "${TMP}" ] || exit "${status}"
    if [ -n "${DOCKERD_STARTED}" ]; then
        dk rm -f "${NAME}" > /dev/null 2>&1 || true
        local pid
        pid=$(cat "${TMP}/dockerd.pid" 2> /dev/null || true)
        if [ -n "${pid}" ]; then
            $SUDO kill -TERM "${pid}" 2> /dev/null || true
            for _ in $(seq 1 100); do
                $SUDO kill -0 "${pid}" 2> /dev/null || break
                sleep 0.2
            done
            $SUDO kill -KILL "${pid}" 2> /dev/null || true
        fi
        # dockerd stops the containerd it started; after a KILL it could not.
        pid=$(cat "${TMP}/exec/containerd/containerd.pid" 2> /dev/null || true)
        [ -n "${pid}" ] && $SUDO kill -KILL "${pid}" 2> /dev/null || true
        [ -n "${DOCKERD_PID:-}" ] && wait "${DOCKERD_PID}" 2> /dev/null || true
        # Anything still mounted below the temporary directory, innermost first.
        awk -v t="${TMP}/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r mount; do $SUDO umount -l "${mount}" || true; done
        # The daemon writes its trust key to /etc/docker; remove it if it was not there before.
        [ -n "${KEY_JSON_EXISTED}" ] || $SUDO rm -f /etc/docker/key.json
    fi
    $SUDO rm -rf "${TMP}"
    exit "${status}"
}
trap cleanup EXIT

# ---- install ---------------------------------------------------------------------------------
missing=()
{ [ -x /usr/bin/docker ] && command -v dockerd > /dev/null; } || missing+=(docker.io)
command -v mmdebstrap > /dev/null || missing+=(mmdebstrap)
command -v nsenter > /dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    echo "container test: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
command -v python3 > /dev/null || fail "python3 is needed for the request in flight"
if [ -z "${BIN:-}" ]; then
    # The binary tests/process.rs runs, as `cargo test --features test-hooks` builds it (a no-op
    # after scripts/test.sh's cargo test; `cargo build` would make a second one, with the
    # dependencies' features not unified with the dev-dependencies').
    cargo test --locked --quiet --features test-hooks --no-run --test process
    BIN=${CARGO_TARGET_DIR:-target}/debug/contact-discovery
fi
phase install

# ---- the runtime base from Debian's packages -------------------------------------------------
# glibc and libgcc only, unpacked without maintainer scripts (no shell, no package manager, as in
# distroless), plus distroless's /etc/passwd and /etc/group for root and nonroot (65532).
mkdir -p "${CACHE}"
recipe="bookworm extract libc6,libgcc-s1 + passwd nonroot (v1)"
if [ ! -s "${CACHE}/runtime-base.tar" ] || [ "$(cat "${CACHE}/runtime-base.recipe" 2> /dev/null)" != "${recipe}" ]; then
    $SUDO mmdebstrap --quiet --format=tar --variant=extract --include=libc6,libgcc-s1 \
        --customize-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$1/etc/passwd"' \
        --customize-hook='printf "root:x:0:\nnonroot:x:65532:\n" > "$1/etc/group"' \
        bookworm "${CACHE}/runtime-base.tar.part" < /dev/null
    $SUDO chown "$(id -u):$(id -g)" "${CACHE}/runtime-base.tar.part"
    mv "${CACHE}/runtime-base.tar.part" "${CACHE}/runtime-base.tar"
    printf '%s\n' "${recipe}" > "${CACHE}/runtime-base.recipe"
fi
phase mmdebstrap

# ---- a daemon of our own ---------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cd-container.XXXXXX")
mkdir "${TMP}/client" "${TMP}/book"
echo '{}' > "${TMP}/daemon.json"
DOCKERD_STARTED=yes
# Its own containerd namespaces too, in case it finds a system containerd running and uses it.
$SUDO dockerd --config-file "${TMP}/daemon.json" --iptables=false --ip-forward=false \
    --bridge=none --storage-driver=vfs --data-root "${TMP}/root" --exec-root "${TMP}/exec" \
    --pidfile "${TMP}/dockerd.pid" --host "unix://${TMP}/docker.sock" \
    --containerd-namespace cd-container-test --containerd-plugins-namespace cd-container-test-plugins \
    > "${TMP}/dockerd.log" 2>&1 &
DOCKERD_PID=$!
# Why the daemon failed: its last fatal or error line, else its last line.
daemon_reason() {
    { grep -E 'level=(fatal|error)' "${TMP}/dockerd.log" || tail -1 "${TMP}/dockerd.log"; } |
        tail -1 | sed -e 's/^.*msg="\{0,1\}//' -e 's/"\{0,1\}$//'
}
up=
for _ in $(seq 1 120); do
    if dk version > /dev/null 2>&1; then
        up=yes
        break
    fi
    kill -0 "${DOCKERD_PID}" 2> /dev/null || skip "dockerd exited at start: $(daemon_reason)"
    sleep 0.5
done
[ -n "${up}" ] || skip "dockerd did not answer within 60 s: $(daemon_reason)"
# Can it run a container at all (namespaces, cgroups, runc)? An image of one file that is not
# ours (the host's dynamic loader, which is static), so that a broken image of ours fails below
# instead of being skipped here.
tar -C / -chf "${TMP}/probe.tar" --transform='s|.*|ld.so|' lib64/ld-linux-x86-64.so.2
dk import "${TMP}/probe.tar" cd-test/probe:one-file > /dev/null
if ! probe=$(dk run --rm --network none --read-only --user 65532:65532 cd-test/probe:one-file \
    /ld.so --version 2>&1); then
    skip "the daemon started but cannot run a container: $(echo "${probe}" | tail -1)"
fi
phase "dockerd start"

dk import "${CACHE}/runtime-base.tar" "${RUNTIME_BASE}" > /dev/null
phase import

# ---- build -----------------------------------------------------------------------------------
# The binary the `prebuilt` stage takes (the one path Dockerfile.dockerignore lets through),
# without its debug information (200 MB of it in a debug build).
rm -f "${CACHE}/contact-discovery"
if command -v objcopy > /dev/null; then
    objcopy --strip-debug "${BIN}" "${CACHE}/contact-discovery"
else
    cp "${BIN}" "${CACHE}/contact-discovery"
fi
# BUILD_IMAGE keeps its default (rust:…, not reachable here): BuildKit must not even resolve it.
dk build --progress=plain -f deploy/Dockerfile --build-arg BINARY_FROM=prebuilt \
    --build-arg RUNTIME_IMAGE="${RUNTIME_BASE}" -t "${IMAGE}" . > "${TMP}/build.log" 2>&1 ||
    { cat "${TMP}/build.log" >&2; fail "docker build"; }
if grep -q '\[compile ' "${TMP}/build.log"; then
    fail "the compile stage was built for BINARY_FROM=prebuilt"
fi
# The default path, as far as it goes without the Rust image: the compile stage on a base with no
# shell must copy every source it lists (a missing or dockerignored one fails there) and then
# fail exactly at its RUN, for want of /bin/sh.
if dk build --progress=plain --network none -f deploy/Dockerfile --target compile \
    --build-arg BUILD_IMAGE="${RUNTIME_BASE}" . > "${TMP}/compile.log" 2>&1; then
    fail "the compile stage built on a base without a shell or cargo"
fi
grep -q '\[compile [0-9]*/[0-9]*\] RUN cargo build --release --locked --bin contact-discovery' \
    "${TMP}/compile.log" && grep -q 'exec: "/bin/sh": stat /bin/sh: no such file or directory' \
    "${TMP}/compile.log" || { cat "${TMP}/compile.log" >&2; fail "the compile stage failed before its RUN"; }
phase build

# ---- run -------------------------------------------------------------------------------------
# As deploy/docker-compose.yml runs it: read-only, no capabilities, no privilege gain, /data a
# named volume (fresh, so it takes the image's /data owner: 65532 must be able to write it).
hardened=(--network none --read-only --cap-drop ALL --security-opt no-new-privileges)
dk volume create "${VOLUME}" > /dev/null
registry=$'+4915112345678\n+4917612345678\n+15550000001 hidden\n'
printf '%s' "${registry}" | dk run --rm -i "${hardened[@]}" -v "${VOLUME}:/data" "${IMAGE}" \
    registry import - || fail "registry import into the volume"
printf 'Name,Phone\nAnna,+4915112345678\nBen,+4917612345678\nCleo,+15550000001\nDora,+4915199999999\n' \
    > "${TMP}/book/contacts.csv"
dk run -d --name "${NAME}" "${hardened[@]}" -v "${VOLUME}:/data" -v "${TMP}/book:/book:ro" \
    -e CONTACT_DISCOVERY_LOG=info "${IMAGE}" serve > /dev/null || fail "docker run"

# The HEALTHCHECK as the image declares it (every 10 s): healthy within its start period.
health=
for _ in $(seq 1 120); do
    health=$(dk inspect -f '{{.State.Status}} {{.State.Health.Status}}' "${NAME}")
    case "${health}" in
        "running healthy") break ;;
        "running starting") sleep 0.5 ;;
        *)
            dk inspect -f '{{json .State.Health}}' "${NAME}" >&2
            fail "container state: ${health}"
            ;;
    esac
done
[ "${health}" = "running healthy" ] || fail "not healthy within 60 s: ${health}"
echo "container test: HEALTHCHECK reports healthy" >&2

# Not root: the serving process's real, effective, saved and filesystem ids, seen from the host.
pid=$(dk inspect -f '{{.State.Pid}}' "${NAME}")
ids=$(awk '/^(Uid|Gid):/ { printf "%s %s %s %s %s;", $1, $2, $3, $4, $5 }' "/proc/${pid}/status")
[ "${ids}" = "Uid: 65532 65532 65532 65532;Gid: 65532 65532 65532 65532;" ] ||
    fail "the server runs as ${ids}"
# Read-only: the root mount of the container's mount namespace, as the kernel has it.
root_options=$($SUDO awk '$5 == "/" { print $6 }' "/proc/${pid}/mountinfo")
case "${root_options}" in
    ro,* | ro) ;;
    *) fail "the root filesystem is mounted ${root_options}" ;;
esac
echo "container test: serving as uid/gid 65532, root filesystem ro" >&2

# A discovery answered inside: the binary's own client in the container, against its loopback,
# with a credential the server's key signs. Registered numbers are found; the hidden and the
# unregistered one are not.
token=$(dk exec "${NAME}" contact-discovery credential --user container-test --ttl 10m) ||
    fail "credential"
for encoding in binary json; do
    dk exec -e CONTACT_DISCOVERY_CREDENTIAL="${token}" "${NAME}" contact-discovery discover \
        --server http://127.0.0.1:8080 --contacts /book/contacts.csv --region DE \
        --encoding "${encoding}" --json > "${TMP}/discover.json" || fail "discover (${encoding})"
    python3 - "${TMP}/discover.json" "${encoding}" << 'EOF' || fail "discovery answer (${encoding})"
import json, sys
report = json.load(open(sys.argv[1]))
found = {n["e164"]: n["registered"] for c in report["contacts"] for n in c["numbers"]}
want = {"+4915112345678": True, "+4917612345678": True,
        "+15550000001": False, "+4915199999999": False}
assert found == want, f"{sys.argv[2]}: {found}"
assert report["summary"]["registered"] == 2, report["summary"]
EOF
done
echo "container test: discovery inside the container: 2 registered found, hidden and unregistered not" >&2

# SIGTERM with a request in flight, from inside the container's network namespace (the container
# has no network but its own loopback): the request's head and all but the last 8 bytes of its
# body (10,000 fingerprints: at the server's minimum body rate that earns it its full body
# timeout, so a slow `docker stop` cannot cut it) are sent, then `docker stop`; new connections
# must be refused while the server still runs, the request must then complete with 200 and the
# right answer, and the server must exit 0 well before the grace period.
$SUDO nsenter --target "${pid}" --net -- env DOCKER_HOST="unix://${TMP}/docker.sock" \
    DOCKER_CONFIG="${TMP}/client" NAME="${NAME}" GRACE="${GRACE}" TOKEN="${token}" \
    python3 - << 'EOF' || fail "SIGTERM drain"
import json, os, socket, struct, subprocess, time

def connect():
    return socket.create_connection(("127.0.0.1", 8080), timeout=20)

def read_all(s):
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data

def running():
    out = subprocess.run(["/usr/bin/docker", "inspect", "-f", "{{.State.Running}}", os.environ["NAME"]],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip() == "true"

s = connect()
s.sendall(b"GET /v1/epoch HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
epoch = json.loads(read_all(s).split(b"\r\n\r\n", 1)[1])["epoch"]
count = 10_000
# Fingerprints 1..count: none is a registered number's (2 in 2^64 each).
body = struct.pack(">Q", epoch) + b"".join(struct.pack(">Q", i) for i in range(1, count + 1))
head = ("POST /v1/discover HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        "content-type: application/octet-stream\r\n"
        f"authorization: Bearer {os.environ['TOKEN']}\r\ncontent-length: {len(body)}\r\n\r\n")
flight = connect()
flight.sendall(head.encode() + body[:-8])
time.sleep(0.2)
started = time.monotonic()
stop = subprocess.Popen(["/usr/bin/docker", "stop", "-t", os.environ["GRACE"], os.environ["NAME"]],
                        stdout=subprocess.DEVNULL)
refused = False
for _ in range(1000):
    try:
        connect().close()
    except ConnectionRefusedError:
        refused = True
        break
    time.sleep(0.01)
assert refused, "still accepting connections after SIGTERM"
assert running(), "exited with a request in flight"
flight.sendall(body[-8:])
response = read_all(flight)
assert response.startswith(b"HTTP/1.1 200"), response[:300]
answer = response.split(b"\r\n\r\n", 1)[1]
assert answer == body[:8] + bytes((count + 7) // 8), f"{len(answer)} bytes: {answer[:16]!r}"
assert stop.wait(timeout=int(os.environ["GRACE"]) + 15) == 0, "docker stop failed"
took = time.monotonic() - started
assert took < int(os.environ["GRACE"]), f"stopped only after {took:.1f} s (killed at the grace period?)"
print(f"container test: SIGTERM: new connections refused, the request in flight ({count} "
      f"fingerprints) answered 200, stopped in {took:.1f} s")
EOF
exit_code=$(dk inspect -f '{{.State.ExitCode}} {{.State.OOMKilled}}' "${NAME}")
[ "${exit_code}" = "0 false" ] || fail "exit code and OOM kill after SIGTERM: ${exit_code}"
dk logs "${NAME}" > "${TMP}/server.log" 2>&1
grep -q 'shutdown requested; draining in-flight requests' "${TMP}/server.log" &&
    grep -q 'stopped' "${TMP}/server.log" || { cat "${TMP}/server.log" >&2; fail "no drain in the log"; }
# What was imported is still in the volume, flushed.
exported=$(dk run --rm "${hardened[@]}" -v "${VOLUME}:/data" "${IMAGE}" registry export) ||
    fail "registry export"
[ "$(sort <<< "${exported}")" = "$(sort <<< "${registry%$'\n'}")" ] ||
    fail "the volume holds ${exported}"
echo "container test: exit 0 after draining; the registry is in the volume" >&2
phase run

echo "container test: passed" >&2
print_phases
