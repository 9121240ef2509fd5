#!/usr/bin/env bash
# The Python standard-library example app on 127.0.0.1:${APP_PORT:-8000}.
# Needs python3 (>= 3.7); installs it with apt-get when missing and run as root.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3 >/dev/null
  else
    echo "python-stdlib: python3 is missing; install it: apt-get install -y python3" >&2
    exit 127
  fi
fi
export APP_PORT="${APP_PORT:-8000}"
exec python3 "$here/app.py"
