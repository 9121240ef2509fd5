#!/usr/bin/env bash
# Runs every test of session-sidecar: formatting, lints, unit and integration tests
# (real redis-server and memcached processes), then the black-box conformance kit against
# the release binary. Installs what is missing (Debian packages, pytest) when run as root.
#
#   ./scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v memcached >/dev/null || missing+=(memcached)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "missing: ${missing[*]} — install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if ! python3 -c 'import pytest' 2>/dev/null; then
  echo "==> installing pytest"
  python3 -m pip install -q pytest || python3 -m pip install -q --break-system-packages pytest
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked

CONFORMANCE_DIR="${CONFORMANCE_DIR:-../shared/conformance}"
if [ -x "$CONFORMANCE_DIR/run.sh" ] || [ -f "$CONFORMANCE_DIR/run.sh" ]; then
  echo "==> conformance kit ($CONFORMANCE_DIR) against the release build"
  cargo build --release --locked
  bash "$CONFORMANCE_DIR/run.sh"
else
  echo "==> conformance kit not found at $CONFORMANCE_DIR (set CONFORMANCE_DIR); skipped"
fi
