#!/usr/bin/env bash
# Runs every test of session-sidecar: formatting, lints, unit and integration tests
# (real redis-server and memcached processes), then the black-box conformance kit against
# the release binary, then the examples (every stack, the browser check, the pycket
# migration) and the deployment files. Installs what is missing (Debian packages, pytest) when run as root.
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

# The examples and deployment files: each script installs its own stack (Debian packages,
# pinned pip/npm) when run as root, and otherwise fails naming the install command.
target_dir="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)"
cargo build --locked --bin session-sidecar
cargo build --locked --release --example demo
export SIDECAR_BIN="$target_dir/debug/session-sidecar"
echo "==> examples: every stack behind the sidecar (examples/test.sh)"
./examples/test.sh
echo "==> examples: the Tornado helper's unit tests"
(cd examples/apps/tornado && python3 -m unittest -q test_sidecar_session)
echo "==> examples: the browser check (examples/browser/run.sh)"
DEMO_BIN="$target_dir/release/examples/demo" ./examples/browser/run.sh
echo "==> examples: pycket migration against real pycket (examples/pycket/test.sh)"
./examples/pycket/test.sh
echo "==> deployment files (scripts/check-ops.sh)"
./scripts/check-ops.sh
echo "==> all tests passed"
