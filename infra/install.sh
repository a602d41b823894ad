#!/usr/bin/env bash
# Installs everything streamrl needs on a fresh machine: a virtualenv with pinned packages
# (torch first, so no CUDA wheels are pulled), Debian's redis-server and kcat.
set -euo pipefail
venv="${1:-.venv}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)…"
  if [ "$(id -u)" = "0" ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v kcat >/dev/null 2>&1; then
  # kcat: the librdkafka command-line client the interop test drives (with a newer librdkafka, see docs/operations.md)
  echo "installing kcat (Debian package)…"
  if [ "$(id -u)" = "0" ]; then sudo=""; else sudo="sudo"; fi
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kcat >/dev/null; } ||
    echo "warning: could not install kcat; tests/stream/test_timelines.py's client test needs it" >&2
fi
if ! command -v java >/dev/null 2>&1; then
  echo "error: Spark needs Java 17 (openjdk-17-jre-headless); install it and re-run" >&2
  exit 1
fi

[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e ".[dev]"
echo "streamrl installed in $venv"
