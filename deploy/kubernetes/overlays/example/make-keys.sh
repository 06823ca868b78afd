#!/usr/bin/env bash
# Generates the four keys this overlay's secretGenerator reads, once. The credential key must
# also be given to the messaging backend (it mints credentials with it); the server secret is
# shared by every replica; the admin token goes to the backend's admin client; the metrics token to Prometheus.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p keys
umask 077
for name in server-secret credential-key; do
  [ -e "keys/$name" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "keys/$name"
done
for name in admin-token metrics-token; do
  [ -e "keys/$name" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "keys/$name"
done
echo "keys in $(pwd)/keys"
