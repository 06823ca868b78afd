#!/usr/bin/env bash
# Our phone-number normaliser against libphonenumber (its Python port, phonenumbers from PyPI,
# pinned in scripts/phone-oracle-requirements.txt): scripts/phone-oracle.py writes every
# example number of every region and non-geographic entity in national, international, E.164,
# RFC 3966 and 00 forms with what phonenumbers makes of each, and tests/phone_oracle.rs reads
# them all with our normaliser; a disagreement not in tests/fixtures/phone-oracle-known.tsv
# fails, and so does a listed one that no longer occurs. phonenumbers lives in a venv under
# the target directory, installed on first use. Takes seconds once the test is built.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
venv=$target/phone-oracle-venv
requirements=scripts/phone-oracle-requirements.txt
# Reinstall when the pin changes: the venv remembers the requirements it was made from.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2> /dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
        -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi
mkdir -p "$target/phone-oracle"
corpus=$(realpath "$target/phone-oracle/corpus.tsv")
"$venv/bin/python" scripts/phone-oracle.py > "$corpus"
PHONE_ORACLE_CORPUS=$corpus cargo test --locked --features test-hooks --test phone_oracle \
    -- --ignored --nocapture
