#!/bin/sh
# End-to-end test of migrate.py against real pycket 0.3.0, Redis and the sidecar.
# SIDECAR_BIN: the sidecar binary (default: `cargo build --bin session-sidecar`).
# Needs python3 (with venv) and redis-server; installs them with apt-get as root.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$dir/../.." && pwd)
if [ "$(id -u)" = 0 ] && { ! command -v redis-server >/dev/null ||
        ! python3 -c 'import ensurepip, venv' 2>/dev/null; }; then
    apt-get update -q >&2 && apt-get install -y -q redis-server python3 python3-venv >&2
fi
venv="$dir/.venv"
if ! cat "$dir/requirements.txt" "$dir/requirements-test.txt" |
        cmp -s - "$venv/installed.txt" 2>/dev/null; then
    python3 -m venv "$venv"
    pip="$venv/bin/pip --disable-pip-version-check -q"
    $pip install -r "$dir/requirements-test.txt"
    $pip install --no-build-isolation pycket==0.3.0
    cat "$dir/requirements.txt" "$dir/requirements-test.txt" > "$venv/installed.txt"
fi
if [ -z "${SIDECAR_BIN:-}" ]; then
    (cd "$root" && cargo build -q --bin session-sidecar)
    SIDECAR_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/session-sidecar"
fi
exec "$venv/bin/python" "$dir/test_migrate.py" "$SIDECAR_BIN"
