#!/usr/bin/env bash
# Runs the Rack example on 127.0.0.1:${APP_PORT:-8000} (examples/README.md) with rackup
# and Puma. Needs the Debian packages ruby, ruby-rack (rack 2.2, which ships rackup) and
# puma, installed here when run as root. (Not WEBrick: it answers 411 to a POST without
# a body and rewrites `Location: /` to an absolute URL.)
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v ruby >/dev/null || missing+=(ruby)
command -v rackup >/dev/null || missing+=(ruby-rack)
command -v puma >/dev/null || missing+=(puma)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y ruby ruby-rack puma
  else
    echo "run.sh: missing ${missing[*]}; install as root: apt-get install -y ruby ruby-rack puma" >&2
    exit 1
  fi
fi
# -E deployment: no Rack::Lint or ShowExceptions, just the access log.
exec rackup config.ru -E deployment -s puma -o 127.0.0.1 -p "${APP_PORT:-8000}"
