#!/usr/bin/env bash
# Make sure Debian's haproxy is installed. As root it is installed with apt-get; otherwise we say what
# to install. With --required (demo, bench) or CI=true a missing haproxy is an error; for a local
# `make test` the HAProxy tests are then skipped, and say so.
set -euo pipefail
required=0
[ "${1:-}" = "--required" ] && required=1
[ "${CI:-}" = "true" ] && required=1

if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "haproxy is missing; installing it with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
  # the package may start a system haproxy; ours run from their own configs, so stop it if it did
  (command -v service >/dev/null 2>&1 && service haproxy stop >/dev/null 2>&1) || true
  exit 0
fi
echo "haproxy is not installed and this is not root. Install it with:  sudo apt-get install -y haproxy" >&2
if [ "$required" = 1 ]; then
  exit 1
fi
echo "continuing: tests that need HAProxy will be skipped (they fail under CI=true)" >&2
