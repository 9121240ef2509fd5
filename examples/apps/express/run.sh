#!/usr/bin/env bash
# Runs the Express example on 127.0.0.1:${APP_PORT:-8000} (examples/README.md).
# Needs Node.js 18 or later and npm (Debian: nodejs, npm; installed here when run as root
# and missing); installs the pinned packages of package-lock.json into ./node_modules once.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
  else
    echo "run.sh: node or npm is missing; install as root: apt-get install -y nodejs npm" >&2
    exit 1
  fi
fi
if [ ! -d node_modules/express ]; then
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
fi
export APP_PORT="${APP_PORT:-8000}"
exec node app.js
