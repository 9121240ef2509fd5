#!/bin/sh
# Install Tornado (pinned) into ./.venv on first use, then run the app in the foreground
# on 127.0.0.1:${APP_PORT:-8000}.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
if ! python3 -c 'import ensurepip, venv' 2>/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -q >&2 && apt-get install -y -q python3 python3-venv >&2
fi
# Reinstall when requirements.txt changed since the last install.
if ! cmp -s "$dir/requirements.txt" "$dir/.venv/installed.txt" 2>/dev/null; then
    python3 -m venv "$dir/.venv"
    "$dir/.venv/bin/pip" install -q --disable-pip-version-check -r "$dir/requirements.txt" >&2
    cp "$dir/requirements.txt" "$dir/.venv/installed.txt"
fi
exec "$dir/.venv/bin/python" "$dir/app.py"
