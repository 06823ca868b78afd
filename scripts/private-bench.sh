#!/usr/bin/env bash
# Private mode (issue 14): our OPRF (RFC 9497, ristretto255-SHA512) + Golomb-coded set against
# OpenMined PSI (PyPI openmined.psi, ECDH over P-256) on the same sizes, in one invocation,
# each side pinned to one core (CPU). For every FPR in FPRS, on SERVER_ITEMS server numbers and
# CLIENT_ITEMS client numbers (half of them registered):
#   setup       server µs per server item (wall and CPU), setup message bytes per server item
#   query       client request and server response bytes; server µs per client item
#               (ProcessRequest); client ms in total (CreateRequest + GetIntersection)
# OpenMined's side is scripts/openmined_psi_bench.py, run for its GCS and its Bloom filter; it
# fails if the intersection it reports is wrong. Its package is installed on first use into a
# venv under target/psi-venv (needs PyPI). One setup at 1 M items takes about 2-3 minutes per
# data structure and FPR; REPEAT multiplies that.
#
#   scripts/private-bench.sh
#   # SERVER_ITEMS=1000000 CLIENT_ITEMS=1000 FPRS="1e-6 1e-9" CPU=1 REPEAT=1 QUERIES=3
#   # DS=gcs,bloom PSI_VERSION=2.0.6 OUT=dir (the JSON reports; a temporary directory if unset)
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_ITEMS=${SERVER_ITEMS:-1000000} CLIENT_ITEMS=${CLIENT_ITEMS:-1000} FPRS=${FPRS:-"1e-6 1e-9"}
CPU=${CPU:-1} REPEAT=${REPEAT:-1} QUERIES=${QUERIES:-3} DS=${DS:-gcs,bloom}
PSI_VERSION=${PSI_VERSION:-2.0.6} VENV=${VENV:-target/psi-venv}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"

ensure_venv() {
    if [ "$("$VENV/bin/python" -c 'from importlib import metadata; print(metadata.version("openmined.psi"))' 2>/dev/null)" = "$PSI_VERSION" ]; then
        return 0
    fi
    echo "installing openmined.psi==$PSI_VERSION into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openmined.psi==$PSI_VERSION"
}

# ---- The Rust side -------------------------------------------------------------------------------
# benches/private.rs on the same SERVER_ITEMS and CLIENT_ITEMS, both rates in one run, and the
# hashed mode on the same sets. Nothing else runs meanwhile, so it is not pinned: its per-element
# and client figures are one thread's, and its setup uses every core, as the server's does.
run_ours() {
    cargo bench --quiet --bench private -- --users "$SERVER_ITEMS" --setup-users "$SERVER_ITEMS" \
        --contacts "$CLIENT_ITEMS" --json "$OUT/ours.json.txt"
}
# -----------------------------------------------------------------------------------------------

run_theirs() { # FPR
    taskset -c "$CPU" "$VENV/bin/python" scripts/openmined_psi_bench.py \
        --server-items "$SERVER_ITEMS" --client-items "$CLIENT_ITEMS" --fpr "$1" \
        --repeat "$REPEAT" --queries "$QUERIES" --ds "$DS" --json > "$OUT/openmined-psi-fpr$1.json"
}

ensure_venv
echo "== ours: N=$SERVER_ITEMS C=$CLIENT_ITEMS, both rates"
run_ours
for fpr in $FPRS; do
    echo "== OpenMined PSI: N=$SERVER_ITEMS C=$CLIENT_ITEMS fpr=$fpr, core $CPU"
    run_theirs "$fpr"
done

echo "== summary (JSON reports in $OUT)"
python3 - "$OUT" <<'PY'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    r = json.load(open(path))
    for s in r["results"]:
        rows.append((os.path.basename(path)[:-5], s))
cols = [("setup µs/item", "setup_us_per_server_item", "{:.1f}"),
        ("setup B/item", "setup_bytes_per_server_item", "{:.3f}"),
        ("request B", "request_bytes", "{:,.0f}"), ("response B", "response_bytes", "{:,.0f}"),
        ("server µs/elem", "server_us_per_client_item", "{:.1f}"),
        ("client ms", "client_total_ms", "{:.1f}"), ("CPU/wall", "cpu_over_wall", "{:.2f}")]
print(f"{'report':<28}{'ds':>7}{'fpr':>7}" + "".join(f"{c[0]:>15}" for c in cols))
for name, s in rows:
    print(f"{name:<28}{s['data_structure']:>7}{s['fpr']:>7g}"
          + "".join(f"{c[2].format(s[c[1]]):>15}" for c in cols))
PY
