#!/usr/bin/env bash
# Runs deploy/systemd/session-sidecar.service for real, under a throwaway systemd that is
# PID 1 of its own PID, mount, network, UTS, IPC and cgroup namespaces (for a machine
# or container where systemd is not PID 1). Nothing touches the host's systemd: the
# unit search path is a temporary directory holding only this unit, a stub app and
# empty stub targets; the network namespace has only its own loopback.
#
#   deploy/systemd/try-unit.sh [BINARY]     # default: target/debug/session-sidecar
#
# Needs root, util-linux (unshare, nsenter), systemd, curl and python3 (the stub app).
# Checks: ExecStartPre check passes and the service starts in its sandbox (no
# capabilities, no_new_privs, seccomp, a user namespace, a read-only /); /healthz,
# /readyz, the proxy and the session admin API answer with secrets from the
# EnvironmentFile; `systemctl reload` succeeds on a good file and fails on a bad one
# while the old config keeps serving; `systemctl stop` drains and exits 0; a bad
# config fails every start at ExecStartPre (the main process never runs) and the unit
# ends failed once the start limit is reached (about 10 s: the slow part of this script).
# Not covered: LoadCredential= (a TLS key through ${CREDENTIALS_DIRECTORY}). Under a
# systemd started this way even a minimal root unit gets an empty credentials
# directory, so that variant cannot be tried here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=$(readlink -f "${1:-target/debug/session-sidecar}")
[ -x "$BIN" ] || { echo "try-unit: no binary at $BIN (cargo build first)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "try-unit: needs root (unshare, systemd as PID 1)" >&2; exit 1; }
for c in unshare nsenter curl python3; do
  command -v "$c" >/dev/null || { echo "try-unit: missing $c" >&2; exit 1; }
done
SYSTEMD=/lib/systemd/systemd
[ -x "$SYSTEMD" ] || { echo "try-unit: missing $SYSTEMD (apt-get install systemd)" >&2; exit 1; }

# Not under /tmp or /var/tmp: the unit has PrivateTmp=yes, and the config must be
# visible inside its sandbox. target/ is gitignored.
D=$(readlink -f target)/try-unit.$$
mkdir -p "$D/units/session-sidecar.service.d" "$D/etc"
PID1= UNSHARE=
cleanup() {
  # Killing the namespace's PID 1 ends every process in it.
  [ -n "$PID1" ] && kill -KILL "$PID1" 2>/dev/null || true
  [ -n "$UNSHARE" ] && kill -KILL "$UNSHARE" 2>/dev/null || true
  [ -n "$UNSHARE" ] && { wait "$UNSHARE" 2>/dev/null || true; }
  rm -rf "$D"
}
trap cleanup EXIT
fail() { echo "try-unit: FAIL: $*" >&2; echo "--- service log" >&2; cat "$D/sidecar.log" >&2 || true; exit 1; }

sed "s|/usr/local/bin/session-sidecar|$BIN|g; s|/etc/session-sidecar|$D/etc|g" \
  deploy/systemd/session-sidecar.service >"$D/units/session-sidecar.service"
cat >"$D/units/session-sidecar.service.d/test.conf" <<EOF
[Service]
StandardOutput=append:$D/sidecar.log
StandardError=append:$D/sidecar.log
EOF
# A system python (a per-user one under /root is not readable by a DynamicUser).
PY=/usr/bin/python3; [ -x "$PY" ] || PY=$(command -v python3)
cat >"$D/units/app.service" <<EOF
[Service]
ExecStart=$PY -m http.server --bind 127.0.0.1 8000 --directory /
DynamicUser=yes
StandardOutput=null
StandardError=null
EOF
printf '[Unit]\nWants=app.service session-sidecar.service\n' >"$D/units/try-$$.target"
for t in sysinit basic shutdown network-online multi-user sockets timers paths slices local-fs; do
  printf '[Unit]\nDescription=stub %s\n' "$t" >"$D/units/$t.target"
done
cat >"$D/etc/sidecar.yaml" <<'EOF'
listen: 127.0.0.1:8080
upstream: http://127.0.0.1:8000
secrets: ["${SESSION_SECRET}"]
admin: {listen: 127.0.0.1:9090, token: "${ADMIN_TOKEN}"}
EOF
chmod 0644 "$D/etc/sidecar.yaml"
cp "$D/etc/sidecar.yaml" "$D/etc/good.yaml"
install -m 0600 /dev/null "$D/etc/env"
ADMIN_TOKEN=$(head -c 48 /dev/urandom | base64 | tr -dc A-Za-z0-9)
{ echo "SESSION_SECRET=$("$BIN" gen-secret)"; echo "ADMIN_TOKEN=$ADMIN_TOKEN"; } >>"$D/etc/env"

unshare --pid --fork --mount --mount-proc --net --uts --ipc --cgroup \
  env -i container=try-unit SYSTEMD_UNIT_PATH="$D/units" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  "$SYSTEMD" --system --unit=try-$$.target --log-target=console --log-level=warning \
  >"$D/pid1.log" 2>&1 </dev/null &
UNSHARE=$!
for _ in $(seq 50); do
  for p in $(pgrep -f -- "--unit=try-$$.target" || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && PID1=$p
  done
  [ -n "$PID1" ] && break
  sleep 0.1
done
[ -n "$PID1" ] || fail "systemd did not start: $(cat "$D/pid1.log")"
IN() { nsenter -t "$PID1" -m -p -n -u -i "$@"; }
for _ in $(seq 100); do
  IN curl -fs -o /dev/null http://127.0.0.1:9090/healthz 2>/dev/null \
    && IN curl -fs -o /dev/null http://127.0.0.1:8000/ 2>/dev/null && break
  sleep 0.1
done

echo "== started: $(IN systemctl show session-sidecar -p ActiveState -p MainPID --value | tr '\n' ' ')"
IN curl -fsS http://127.0.0.1:9090/healthz >/dev/null || fail "/healthz"
IN curl -fsS http://127.0.0.1:9090/readyz >/dev/null || fail "/readyz"
IN curl -fsS -o /dev/null http://127.0.0.1:8080/ || fail "proxy to the app"
IN curl -fsS -o /dev/null -H "Authorization: Bearer $ADMIN_TOKEN" \
  "http://127.0.0.1:9090/sessions?owner=x" || fail "admin API with the token from the EnvironmentFile"
echo "== /healthz, /readyz, proxy, admin API: ok"

HOSTPID=$(pgrep -f -x -- "$BIN --config $D/etc/sidecar.yaml" || true)
[ -n "$HOSTPID" ] || fail "main process not found"
st=/proc/$HOSTPID/status
grep -q '^CapEff:[[:space:]]*0000000000000000$' "$st" || fail "has capabilities"
grep -q '^CapBnd:[[:space:]]*0000000000000000$' "$st" || fail "bounding set not empty"
grep -q '^NoNewPrivs:[[:space:]]*1$' "$st" || fail "no_new_privs off"
grep -q '^Seccomp:[[:space:]]*2$' "$st" || fail "no seccomp filter"
uid=$(awk '/^Uid:/ {print $2}' "$st")
[ "$uid" != 0 ] || fail "runs as root"
awk '$5 == "/" {print $6}' "/proc/$HOSTPID/mountinfo" | grep -q '^ro' || fail "/ is not read-only"
echo "== sandbox: uid $uid, CapEff/CapBnd 0, NoNewPrivs 1, seccomp on, / read-only"

IN systemctl reload session-sidecar || fail "reload of a good config"
echo "bogus_key: 1" >>"$D/etc/sidecar.yaml"
if IN systemctl reload session-sidecar 2>/dev/null; then fail "reload of a bad config succeeded"; fi
IN systemctl is-active -q session-sidecar || fail "bad reload stopped the service"
IN curl -fsS http://127.0.0.1:9090/healthz >/dev/null || fail "serving after a bad reload"
cp "$D/etc/good.yaml" "$D/etc/sidecar.yaml"
echo "== reload: good file ok, bad file refused by ExecReload's check, still serving"

t0=$(date +%s.%N)
IN systemctl stop session-sidecar
t1=$(date +%s.%N)
[ "$(IN systemctl show session-sidecar -p Result --value)" = success ] || fail "stop: $(IN systemctl show session-sidecar -p Result --value)"
grep -q 'shutdown complete' "$D/sidecar.log" || fail "no drain in the log"
echo "== stop: drained, Result=success, $(awk "BEGIN {printf \"%.2f\", $t1 - $t0}") s"

echo "bogus_key: 1" >>"$D/etc/sidecar.yaml"
if IN systemctl start session-sidecar 2>/dev/null; then fail "start with a bad config succeeded"; fi
# Retried every RestartSec=2s until StartLimitBurst=5 starts, then failed for good.
for _ in $(seq 40); do
  [ "$(IN systemctl show session-sidecar -p ActiveState --value)" = failed ] && break
  sleep 0.5
done
[ "$(IN systemctl show session-sidecar -p ActiveState --value)" = failed ] \
  || fail "bad config: $(IN systemctl show session-sidecar -p Result -p ActiveState -p NRestarts | tr '\n' ' ')"
[ "$(IN systemctl show session-sidecar -p ExecMainPID --value)" = 0 ] || fail "the main process ran with a bad config"
IN curl -fs -o /dev/null http://127.0.0.1:9090/healthz 2>/dev/null && fail "serving with a bad config"
echo "== bad config: every start fails at ExecStartPre, main process never runs, failed after $(IN systemctl show session-sidecar -p NRestarts --value) retries"
cp "$D/etc/good.yaml" "$D/etc/sidecar.yaml"
IN systemctl reset-failed session-sidecar 2>/dev/null || true
IN systemctl start session-sidecar || fail "start again"
IN systemctl is-active -q session-sidecar || fail "not active after a start"

echo "try-unit: OK"
