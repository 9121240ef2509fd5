#!/usr/bin/env bash
# One command for the benchmark (docs/performance.md#the-benchmark): installs what is missing (nginx, wrk,
# redis-server, memcached, python3 from Debian's packages), builds the sidecar in release
# mode and runs bench/bench.py, which starts every peer on loopback, measures and prints
# a table of ratios to nginx proxy_pass. Arguments are passed on (`--help` lists them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for tool in nginx:nginx wrk:wrk redis-server:redis-server redis-cli:redis-tools \
            memcached:memcached python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] \
    || missing+=("${tool#*:}")
done
# The nginx + Lua + Redis peer (docs/performance.md#the-nginx--lua-peer).
for file in /usr/lib/nginx/modules/ngx_http_lua_module.so:libnginx-mod-http-lua \
            /usr/share/lua/5.1/nginx/redis.lua:lua-nginx-redis \
            /usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so:lua-cjson; do
  [ -e "${file%%:*}" ] || missing+=("${file#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: missing ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packages start system services on the default ports; the benchmark starts its
  # own on free ports and wants the cores to itself.
  for svc in nginx redis-server memcached; do (service "$svc" stop >/dev/null 2>&1 || true); done
fi

cargo build --release --locked --bin session-sidecar
# 1,000 idle connections plus wrk's need more than the usual 1,024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py --binary target/release/session-sidecar "$@"
