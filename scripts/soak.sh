#!/usr/bin/env bash
# The soak: mixed reads, writes, logins and logouts against the release binary for
# MINUTES (default 30), with redis-server restarted every 2 minutes (SIGTERM and SIGKILL
# in turn; it keeps an append-only file fsynced on every write, so every acknowledged
# write survives). Prints the sidecar's RSS, open file descriptors, threads and tokio
# tasks once a minute, the first sample after the 60 s warm-up against the last, the
# status counts and a verdict; exits non-zero when RSS or FDs grew after warm-up (RSS:
# more than 10 % + 2 MiB; FDs: more than 4) or any answer was wrong (another session's
# data, a lost or doubled write, an unexpected status or a connection error).
#
#   ./scripts/soak.sh [MINUTES]
#
# Environment: SIDECAR_BIN (default: `cargo build --release`, target/release),
# SOAK_WORKERS (16), SOAK_RESTART_EVERY (seconds, 120). The upstream is the Python
# standard-library example (examples/apps/python-stdlib). Needs redis-server and
# python3; installs them with apt-get when run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-30}"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "soak: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if [ -z "${SIDECAR_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin session-sidecar
  SIDECAR_BIN="${CARGO_TARGET_DIR:-target}/release/session-sidecar"
fi
exec python3 scripts/soak.py --sidecar "$SIDECAR_BIN" --minutes "$minutes" \
  --workers "${SOAK_WORKERS:-16}" --restart-every "${SOAK_RESTART_EVERY:-120}"
