#!/usr/bin/env bash
# Runs the Express example on 127.0.0.1:${APP_PORT:-8000} (examples/README.md).
# Needs Node.js and npm; installs the pinned packages into ./node_modules once.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "run.sh: node and npm are required (Debian: apt-get install -y nodejs npm)" >&2
  exit 1
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
