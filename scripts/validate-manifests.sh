#!/usr/bin/env bash
# Validates every Kubernetes object under deploy/kubernetes against the Kubernetes API schemas
# (strict: unknown fields are errors) with `kubernetes-validate` from PyPI, which bundles the
# schemas and needs no cluster. Kustomization files are not API objects and are skipped; their
# structure is checked by tests/deploy.rs. scripts/test.sh (and so CI) runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.37.0
VENV=${CARGO_TARGET_DIR:-target}/kubernetes-validate-${VERSION}
if [ ! -x "${VENV}/bin/kubernetes-validate" ]; then
    python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet "kubernetes-validate==${VERSION}"
fi
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
"${VENV}/bin/kubernetes-validate" --strict --quiet --kubernetes-version "${VERSION%.*}.0" \
    "${manifests[@]}"
echo "kubernetes-validate ${VERSION}: ${#manifests[@]} manifest files valid" >&2
