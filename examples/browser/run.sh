#!/usr/bin/env bash
# The browser check end to end: starts the demo (examples/demo.rs) on a free loopback
# port, drives it in headless Chromium with check.mjs, stops the demo.
#
#   examples/browser/run.sh
#
# Environment:
#   DEMO_BIN   the demo binary (default: `cargo build --example demo`, then
#              target/debug/examples/demo)
#   CHROMIUM   the browser (default /usr/bin/chromium, Debian's `chromium` package)
#
# The temporary directory (screenshots, the demo's log) is kept and its path printed.
# Installs, when run as root and missing: chromium (apt-get), nodejs and npm (apt-get),
# and playwright-core from package-lock.json into this directory (npm ci). Without root a
# missing piece is an error naming the install command; nothing is ever skipped.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
chromium="${CHROMIUM:-/usr/bin/chromium}"

apt_install() { # apt_install WHAT PACKAGE...: install as root, or fail with the command
  local what="$1"
  shift
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser check: installing $* (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else
    echo "browser check: $what is missing; install it: apt-get install -y $*" >&2
    exit 1
  fi
}

if [ ! -x "$chromium" ]; then
  if [ -n "${CHROMIUM:-}" ]; then
    echo "browser check: CHROMIUM=$chromium is not an executable" >&2
    exit 1
  fi
  apt_install "Chromium ($chromium)" chromium
  [ -x "$chromium" ] || { echo "browser check: apt-get installed chromium but $chromium is missing" >&2; exit 1; }
fi
command -v curl >/dev/null 2>&1 || apt_install curl curl
command -v node >/dev/null 2>&1 || apt_install node nodejs
command -v npm >/dev/null 2>&1 || apt_install npm npm

# playwright-core, exactly as locked, into this directory.
want="$(node -p 'require(process.argv[1]).packages["node_modules/playwright-core"].version' "$here/package-lock.json")"
have="$(node -p 'try { require(process.argv[1]).version } catch { "" }' "$here/node_modules/playwright-core/package.json")"
if [ "$want" != "$have" ]; then
  echo "browser check: npm ci (playwright-core $want)" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The demo.
if [ -n "${DEMO_BIN:-}" ]; then
  demo="$DEMO_BIN"
else
  echo "browser check: building the demo (cargo build --example demo)" >&2
  (cd "$root" && cargo build --quiet --example demo)
  demo="${CARGO_TARGET_DIR:-$root/target}/debug/examples/demo"
fi
[ -x "$demo" ] || { echo "browser check: no demo binary at $demo" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/browser-check.XXXXXX")"
demo_pid=""
cleanup() {
  if [ -n "$demo_pid" ]; then
    kill -TERM "$demo_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=""
for _ in $(seq 1 200); do
  p=$(( ((RANDOM << 15) | RANDOM) % 40000 + 20000 ))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port="$p"; break; fi
done
[ -n "$port" ] || { echo "browser check: no free port" >&2; exit 1; }

NO_COLOR=1 DEMO_LISTEN="127.0.0.1:$port" "$demo" >"$work/demo.log" 2>&1 </dev/null &
demo_pid=$!
deadline=$((SECONDS + 30))
until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; do
  if ! kill -0 "$demo_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "browser check: the demo did not answer on 127.0.0.1:$port; its log:" >&2
    sed 's/^/    /' "$work/demo.log" >&2
    exit 1
  fi
  sleep 0.2
done

rc=0
node "$here/check.mjs" "http://127.0.0.1:$port/" "$work" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "--- last 30 lines of the demo's log ($work/demo.log)" >&2
  tail -n 30 "$work/demo.log" | sed 's/^/    /' >&2
  echo "browser check: FAILED (files in $work)" >&2
  exit "$rc"
fi
echo "browser check: passed (screenshots and the demo's log in $work)"
