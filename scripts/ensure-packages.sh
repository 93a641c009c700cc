#!/usr/bin/env bash
# Make sure Debian packages the tests or the demo need are installed: haproxy (real load balancer) and
# chromium (the dashboard test). As root they are installed with apt-get; otherwise we say what to
# install. With --required (demo, bench) or CI=true a missing one is an error; for a local `make test`
# the tests that need it are skipped instead, and say so.
#   scripts/ensure-packages.sh [--required] haproxy [chromium]
set -euo pipefail
required=0
if [ "${1:-}" = "--required" ]; then required=1; shift; fi
[ "${CI:-}" = "true" ] && required=1

present() {
  case "$1" in
    haproxy) command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] ;;
    chromium) command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] ;;
    bind9) [ -x /usr/sbin/named ] ;;
    pdns-server) [ -x /usr/sbin/pdns_server ] ;;
    *) dpkg -s "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for pkg in "$@"; do
  present "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the haproxy package may start a system haproxy; ours run from their own configs
  if [[ " ${missing[*]} " == *" haproxy "* ]]; then
    (command -v service >/dev/null 2>&1 && service haproxy stop >/dev/null 2>&1) || true
  fi
  # bind9 and pdns-server start system daemons on port 53: the tests run their own on loopback ports
  if [[ " ${missing[*]} " == *" bind9 "* ]]; then
    (command -v service >/dev/null 2>&1 && service named stop >/dev/null 2>&1) || true
  fi
  if [[ " ${missing[*]} " == *" pdns-server "* ]]; then
    (command -v service >/dev/null 2>&1 && service pdns stop >/dev/null 2>&1) || true
  fi
  exit 0
fi
echo "missing: ${missing[*]}; this is not root. Install with:  sudo apt-get install -y ${missing[*]}" >&2
if [ "$required" = 1 ]; then
  exit 1
fi
echo "continuing: tests that need ${missing[*]} will be skipped (they fail under CI=true)" >&2
