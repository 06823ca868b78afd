#!/usr/bin/env bash
# Reads an HdrHistogram interval log (`loadgen --hdr-log`) with HdrHistogram_py, the Python port
# (`hdrhistogram` from PyPI, a prebuilt wheel), and prints what it found as JSON (see
# scripts/read-hdr-log.py). tests/api/loadgen.rs runs it to show the log is readable by the
# standard tooling, not only by the crate that wrote it. Usage: scripts/read-hdr-log.sh LOG
set -euo pipefail
log=$(realpath "$1")
cd "$(dirname "$0")/.."
VERSION=0.10.8
VENV=${CARGO_TARGET_DIR:-target}/hdrhistogram-py-${VERSION}
if [ ! -x "${VENV}/bin/python" ] || ! "${VENV}/bin/python" -c 'import hdrh' 2> /dev/null; then
    python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet --disable-pip-version-check "hdrhistogram==${VERSION}"
fi
"${VENV}/bin/python" scripts/read-hdr-log.py "${log}"
