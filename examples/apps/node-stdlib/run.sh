#!/usr/bin/env bash
# The Node.js built-in-modules example app on 127.0.0.1:${APP_PORT:-8000}.
# Needs node (>= 14); installs Debian's nodejs with apt-get when missing and run as root.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v node >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq nodejs >/dev/null
  else
    echo "node-stdlib: node is missing; install it: apt-get install -y nodejs" >&2
    exit 127
  fi
fi
export APP_PORT="${APP_PORT:-8000}"
exec node "$here/app.js"
