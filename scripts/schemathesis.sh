#!/usr/bin/env bash
# Schemathesis (from PyPI, pinned) against docs/openapi.yaml and a running server: every check,
# every phase (examples, coverage, fuzzing, and the stateful one, which follows the spec's
# `links`: epoch → discover, manifest → shard / delta / manifest, change → change / stats), on
# both listeners. Bounded (SCHEMATHESIS_MAX_EXAMPLES per operation, default 10; the seed fixed,
# SCHEMATHESIS_SEED to explore others) so it takes well under a minute on two cores once built;
# fails on any failure. scripts/test.sh (and so CI) runs it.
#
# The server is the debug build of `serve` (BIN=path uses that binary instead) on a temporary
# data directory with 1,000 generated numbers, both listeners on free loopback ports, generous
# rate limits (429 stays documented; it is not what this run is about). The run authenticates
# as a user would: a credential minted with `contact-discovery credential`, the admin and
# metrics tokens the server wrote. What JSON Schema cannot say is in scripts/schemathesis_hooks.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=$(realpath -m "${CARGO_TARGET_DIR:-target}/schemathesis-${VERSION}")
if [ ! -x "${VENV}/bin/schemathesis" ]; then
    rm -rf "${VENV}"
    python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet --disable-pip-version-check "schemathesis==${VERSION}"
fi
if [ -z "${BIN:-}" ]; then
    cargo build --locked --quiet --bin contact-discovery
    BIN=${CARGO_TARGET_DIR:-target}/debug/contact-discovery
fi
BIN=$(realpath "${BIN}")
SPEC=$(realpath docs/openapi.yaml)
HOOKS=$(realpath scripts/schemathesis_hooks.py)
. scripts/lib.sh # prepare_run, start_server: $WORK, the server and both removed on exit

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

prepare_run 1000
PORT=$(free_port)
ADMIN_PORT=$(free_port)
start_server "${PORT}" "${ADMIN_PORT}" --private-publish-interval-ms 200
PUBLIC=http://127.0.0.1:${PORT}
ADMIN=http://127.0.0.1:${ADMIN_PORT}
CREDENTIAL=$("${BIN}" credential --user schemathesis --ttl 1h --data-dir "${WORK}/data")
ADMIN_TOKEN=$(cat "${WORK}/data/admin.token")
METRICS_TOKEN=$(cat "${WORK}/data/metrics.token")

json_field() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
manifest() { curl -sf "${PUBLIC}/v1/private/set" -H "Authorization: Bearer ${CREDENTIAL}"; }
EPOCH=$(curl -sf "${PUBLIC}/v1/epoch" | json_field epoch)
KEY_EPOCH=$(manifest | json_field key_epoch)
# A version of the set older than the current one, so that a delta from it exists: the
# version before one registration is published.
OLD_VERSION=$(manifest | json_field version)
curl -sf "${ADMIN}/admin/v1/registrations" -H "Authorization: Bearer ${ADMIN_TOKEN}" \
    -H 'Content-Type: application/json' -d '{"add": ["+999999999999999"]}' > /dev/null
for _ in $(seq 1 100); do
    [ "$(manifest | json_field version)" != "${OLD_VERSION}" ] && break
    sleep 0.1
done

# The values a request needs from the server's state, which no schema can hold: the current
# epoch and key epoch (a request naming another is answered 410), a set version to take a
# delta from. Each replaces the generated value in every case (negative ones mutate the rest).
cat > "${WORK}/schemathesis.toml" << EOF
hooks = "${HOOKS}"
seed = ${SCHEMATHESIS_SEED:-20261202}
[generation]
max-examples = ${SCHEMATHESIS_MAX_EXAMPLES:-10}
database = "none"
[cache]
enabled = false
[auth.openapi.credential]
bearer = "${CREDENTIAL}"
[auth.openapi.adminToken]
bearer = "${ADMIN_TOKEN}"
[auth.openapi.metricsToken]
bearer = "${METRICS_TOKEN}"
[parameters]
"body.epoch" = ${EPOCH}
"body.key_epoch" = ${KEY_EPOCH}
"query.key_epoch" = ${KEY_EPOCH}
"query.since" = "${OLD_VERSION}"
EOF

run() {
    (cd "${WORK}" && "${VENV}/bin/schemathesis" --config-file "${WORK}/schemathesis.toml" \
        run "${SPEC}" --checks all --phases examples,coverage,fuzzing,stateful --workers 1 \
        --no-color "$@")
}
echo "schemathesis ${VERSION}: the public listener" >&2
run --url "${PUBLIC}" --exclude-tag admin
echo "schemathesis ${VERSION}: the admin listener" >&2
run --url "${ADMIN}" --include-tag admin --include-tag health
