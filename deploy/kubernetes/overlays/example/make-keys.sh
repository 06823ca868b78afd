#!/usr/bin/env bash
# Generates what this overlay's secretGenerators read, once: the four keys, the Redis password
# with the Redis ACL file that holds it (from redis-users.acl.template), and the Redis URLs that
# carry it. The credential key must also be given to the messaging backend (it mints credentials
# with it); the server secret is shared by every replica; the admin token goes to the backend's
# admin client; the metrics token to Prometheus.
#
# Redis ACL (redis-users.acl.template): the `default` user (any unauthenticated connection) may
# only PING, for the readiness probe; the service authenticates as `contact-discovery`, limited
# to keys `cd:*` and to commands outside @dangerous. tests/replication.rs runs a real Redis with
# this very template.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p keys
umask 077
for name in server-secret credential-key admin-token metrics-token; do
  [ -e "keys/$name" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "keys/$name"
done
# Hex only: safe in a URL and in the ACL file as it is.
[ -e keys/redis-password ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > keys/redis-password
password="$(cat keys/redis-password)"
sed "s/@PASSWORD@/$password/" redis-users.acl.template > keys/redis-users.acl
# rediss:// instead once Redis serves TLS (docs/OPERATIONS.md "Several replicas").
printf 'redis://contact-discovery:%s@contact-discovery-redis:6379/0' "$password" > keys/registry-url
printf 'redis://contact-discovery:%s@contact-discovery-redis:6379/1' "$password" > keys/rate-limit-url
echo "keys in $(pwd)/keys"
