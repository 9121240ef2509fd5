#!/usr/bin/env bash
# Runs the PHP example on 127.0.0.1:${APP_PORT:-8000} (examples/README.md) with PHP's
# built-in server. Needs the Debian package php-cli, installed here when run as root.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v php >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y php-cli
  else
    echo "run.sh: php is missing; install it as root: apt-get install -y php-cli" >&2
    exit 1
  fi
fi
exec php -S "127.0.0.1:${APP_PORT:-8000}" index.php
