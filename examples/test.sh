#!/usr/bin/env bash
# Walks the flow of examples/README.md against every example app behind session-sidecar.
#
#   examples/test.sh                      # every examples/apps/*/run.sh
#   examples/test.sh python-stdlib flask  # only these stacks
#
# Environment:
#   SIDECAR_BIN              sidecar binary to use (default: `cargo build --bin
#                            session-sidecar`, then target/debug/session-sidecar)
#   EXAMPLES_ALLOW_MISSING=1 skip (instead of fail) a stack whose run.sh exits 127
#                            before answering: its toolchain is missing and could not
#                            be installed (run.sh installs it when run as root)
#   EXAMPLES_START_TIMEOUT   seconds an app may take to answer (default 180: first
#                            runs install packages)
#   EXAMPLES_KEEP=1          keep the temporary directory (logs, configs, jars)
#
# Needs bash, curl and setsid (util-linux). Prints one line per stack and a closing
# "examples: N passed, N failed, N skipped"; exits non-zero when any stack failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
apps="$here/apps"
start_timeout="${EXAMPLES_START_TIMEOUT:-180}"
allow_missing="${EXAMPLES_ALLOW_MISSING:-0}"

for tool in curl setsid; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "examples/test.sh: $tool is missing; install it: apt-get install -y ${tool/setsid/util-linux}" >&2
    exit 2
  }
done

# ---------------------------------------------------------------------------------------
# The sidecar binary.
if [ -n "${SIDECAR_BIN:-}" ]; then
  sidecar="$SIDECAR_BIN"
else
  echo "examples/test.sh: building the sidecar (cargo build --bin session-sidecar)" >&2
  (cd "$root" && cargo build --quiet --bin session-sidecar)
  sidecar="${CARGO_TARGET_DIR:-$root/target}/debug/session-sidecar"
fi
[ -x "$sidecar" ] || { echo "examples/test.sh: no sidecar binary at $sidecar" >&2; exit 2; }

# ---------------------------------------------------------------------------------------
# The stacks.
stacks=()
if [ "$#" -gt 0 ]; then
  stacks=("$@")
else
  for run in "$apps"/*/run.sh; do
    [ -e "$run" ] || continue
    stacks+=("$(basename "$(dirname "$run")")")
  done
fi
[ "${#stacks[@]}" -gt 0 ] || { echo "examples/test.sh: no stack found under $apps" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/examples-test.XXXXXX")"

# ---------------------------------------------------------------------------------------
# Helpers (used inside one stack's subshell).

# A free loopback port: nothing listens on it now. (The app's port is taken before the
# sidecar's is picked, so the two never collide.) Drawn from 20000-32767, below Linux's
# ephemeral range (32768-60999), so an outgoing connection of another process cannot
# hold it between the pick and the app's bind; a start that still loses the race is
# retried on another port (see "The app").
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( ((RANDOM << 15) | RANDOM) % 12768 + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "examples/test.sh: no free port found" >&2
  return 1
}

secret() {
  # 48 random bytes, base64 without +/= : 60+ characters.
  head -c 48 /dev/urandom | base64 | tr -d '\n+/='
}

log_tails() {
  local f
  for f in "$app_log" "$sidecar_log"; do
    [ -f "$f" ] || continue
    echo "--- last 30 lines of $f"
    tail -n 30 "$f" | sed 's/^/    /'
  done
}

# fail WHAT EXPECTED GOT: the step failed; print everything and end this stack.
fail() {
  {
    echo "FAIL [$stack] step: $step"
    echo "  check:    $1"
    echo "  expected: $(printf '%s' "$2" | sed '2,$s/^/            /')"
    echo "  got:      $(printf '%s' "$3" | sed '2,$s/^/            /')"
    log_tails
  } >&2
  echo "FAIL $stack: $step: $1" >"$result"
  exit 1
}

step() { step="$1"; }

# req CLIENT METHOD PATH [curl args...]: one request through the sidecar, no redirect
# followed. CLIENT names a cookie jar ("-" for none). Sets status, body, headers.
req() {
  local client="$1" method="$2" path="$3"
  shift 3
  local jar=() out="$dir/resp"
  if [ "$client" != "-" ]; then
    jar=(-b "$dir/$client.jar" -c "$dir/$client.jar")
    touch "$dir/$client.jar"
  fi
  # A POST without a body of its own still sends one (Content-Length: 0).
  local data=() a
  if [ "$method" = POST ]; then
    data=(--data-binary '')
    for a in "$@"; do case "$a" in --data*) data=() ;; esac; done
  fi
  : >"$out.body"
  : >"$out.headers"
  if ! status=$(curl -sS --max-time 15 -o "$out.body" -D "$out.headers" -w '%{http_code}' \
      -X "$method" "${jar[@]}" "${data[@]}" "$@" "http://127.0.0.1:$sidecar_port$path" 2>"$out.err"); then
    fail "$method $path answers" "an HTTP response" "curl: $(cat "$out.err")"
  fi
  body="$(cat "$out.body"; printf x)"
  body="${body%x}"
  headers="$(tr -d '\r' <"$out.headers")"
  # Nothing of the reserved family may reach a client.
  local leaked
  leaked="$(printf '%s\n' "$headers" | grep -i '^x[-_.]session' || true)"
  [ -z "$leaked" ] || fail "$method $path: no X-Session* header reaches the client" "none" "$leaked"
}

# header NAME: the (last) value of a response header, empty when absent.
header() {
  printf '%s\n' "$headers" | awk -v n="$(printf '%s' "$1" | tr 'A-Z' 'a-z')" '
    { i = index($0, ":"); if (i == 0) next
      k = tolower(substr($0, 1, i - 1)); v = substr($0, i + 1)
      sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v)
      if (k == n) last = v }
    END { print last }'
}

expect_status() {
  [ "$status" = "$1" ] || fail "HTTP status" "$1" "$status (body: $(printf '%s' "$body" | head -c 300))"
}

expect_redirect() {
  expect_status 303
  local loc
  loc="$(header Location)"
  [ "$loc" = "/" ] || fail "Location header" "/" "${loc:-<none>}"
}

# expect_page STATUS USER VISITS FLASH: a 200 GET / with exactly the contract's four lines.
expect_page() {
  expect_status 200
  local ct want
  ct="$(header Content-Type | tr 'A-Z' 'a-z' | tr -d ' \t')"
  [ "$ct" = "text/plain;charset=utf-8" ] || fail "Content-Type" "text/plain; charset=utf-8" "$(header Content-Type)"
  want="status: $1"$'\n'"user: $2"$'\n'"visits: $3"$'\n'"flash: $4"
  # The four lines and nothing else (the last line's newline optional).
  [ "$body" = "$want"$'\n' ] || [ "$body" = "$want" ] || fail "GET / body" "$want" "$body"
}

# cookie CLIENT: the session cookie's value in that client's jar (empty when none).
cookie() {
  [ -f "$dir/$1.jar" ] || return 0
  awk -F'\t' '$6 == "session" { v = $7 } END { print v }' "$dir/$1.jar"
}

# session_id CLIENT: the id part of the cookie, checking the <id>.<mac> format.
session_id() {
  local c
  c="$(cookie "$1")"
  [[ "$c" =~ ^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$ ]] \
    || fail "session cookie of client $1 is <id>.<mac>" "22 + 1 + 43 base64url characters" "${c:-<no cookie>}"
  printf '%s' "${c%%.*}"
}

wait_http() { # wait_http PORT PID TIMEOUT WHAT
  local port="$1" pid="$2" deadline=$((SECONDS + $3))
  while :; do
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null && exited=0 || exited=$?
      return 3
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 4
    sleep 0.3
  done
}

stop_group() { # stop_group PID: end the process group started with setsid
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------
# One stack: start the app and the sidecar, walk the flow.
run_stack() {
  stack="$1"
  dir="$work/$stack"
  mkdir -p "$dir"
  result="$dir/result"
  app_log="$dir/app.log"
  sidecar_log="$dir/sidecar.log"
  app_pid="" sidecar_pid="" step="start"
  trap 'stop_group "$sidecar_pid"; stop_group "$app_pid"' EXIT
  trap 'exit 130' INT TERM

  local run="$apps/$stack/run.sh"
  [ -f "$run" ] || fail "examples/apps/$stack/run.sh exists" "a run.sh" "no such file"

  # The app.
  step "start the app ($run)"
  local started=$SECONDS rc=0 attempt
  for attempt in 1 2 3; do
    app_port="$(free_port)"
    APP_PORT="$app_port" setsid bash "$run" >"$app_log" 2>&1 </dev/null &
    app_pid=$!
    rc=0
    wait_http "$app_port" "$app_pid" "$start_timeout" || rc=$?
    # Lost the port to another process between the pick and the bind: another port.
    if [ "$rc" = 3 ] && grep -qiE "address already in use|EADDRINUSE" "$app_log"; then
      echo "examples/test.sh: $stack: port $app_port was taken before the app bound it (attempt $attempt); another port" >&2
      continue
    fi
    break
  done
  if [ "$rc" = 3 ]; then
    app_pid=""
    if [ "$exited" = 127 ]; then
      if [ "$allow_missing" = 1 ]; then
        echo "SKIP $stack: toolchain missing ($(tail -n 1 "$app_log"))" >"$result"
        exit 0
      fi
      fail "the app's toolchain is present (run.sh exited 127: missing and not installable; as root run.sh installs it; EXAMPLES_ALLOW_MISSING=1 skips)" \
        "the app answering on 127.0.0.1:$app_port" "$(tail -n 3 "$app_log")"
    fi
    fail "the app answers on 127.0.0.1:$app_port" "an HTTP answer" "run.sh exited with status $exited"
  elif [ "$rc" = 4 ]; then
    fail "the app answers on 127.0.0.1:$app_port" "an HTTP answer within ${start_timeout}s" "no answer (EXAMPLES_START_TIMEOUT raises the bound)"
  fi
  local app_secs=$((SECONDS - started))

  # The sidecar.
  step "start the sidecar"
  sidecar_port="$(free_port)"
  cat >"$dir/sidecar.yaml" <<EOF
listen: "127.0.0.1:$sidecar_port"
upstream: "http://127.0.0.1:$app_port"
secrets: ["$(secret)"]
store: {engine: memory}
cookies: {secure: false}
admin: {listen: null}
EOF
  setsid "$sidecar" --config "$dir/sidecar.yaml" >"$sidecar_log" 2>&1 </dev/null &
  sidecar_pid=$!
  rc=0
  wait_http "$sidecar_port" "$sidecar_pid" 30 || rc=$?
  if [ "$rc" != 0 ]; then
    [ "$rc" = 3 ] && sidecar_pid=""
    fail "the sidecar answers on 127.0.0.1:$sidecar_port" "an HTTP answer" "$([ "$rc" = 3 ] && echo "it exited with status $exited" || echo "no answer within 30s")"
  fi

  local id1 id2 id3 old

  # 1. Anonymous visits: the first write (Incr) creates the session.
  step "1. GET / twice (visits 1 then 2, status none then active)"
  req a GET /
  expect_page none anonymous 1 -
  id1="$(session_id a)"
  req a GET /
  expect_page active anonymous 2 -
  [ "$(session_id a)" = "$id1" ] || fail "session id after the second GET" "$id1 (unchanged)" "$(session_id a)"

  # 2. Login: new id, user set, flash once.
  step "2. POST /login user=ann (new session id, user ann, flash once)"
  req a POST /login --data-urlencode user=ann
  expect_redirect
  id2="$(session_id a)"
  [ "$id2" != "$id1" ] || fail "the cookie's session id changes on login" "an id other than $id1" "$id2"
  req a GET /
  expect_page active ann 3 "welcome ann"
  req a GET /
  expect_page active ann 4 -
  [ "$(session_id a)" = "$id2" ] || fail "session id after login stays" "$id2" "$(session_id a)"

  # 3. A second device; the first signs out the others.
  step "3. a second client logs in as ann; the first posts /sign-out-others"
  req b POST /login --data-urlencode user=ann
  expect_redirect
  session_id b >/dev/null
  req b GET /
  expect_page active ann 1 "welcome ann"
  req a POST /sign-out-others
  expect_redirect
  [ "$(session_id a)" = "$id2" ] || fail "the first client keeps its session on /sign-out-others" "$id2" "$(session_id a)"
  req b GET /
  expect_page expired anonymous 1 -
  req a GET /
  expect_page active ann 5 "other devices signed out"

  # 4. Logout: flash shown, user gone, the old cookie is dead.
  step "4. POST /logout (flash logged out, user anonymous, old cookie expired)"
  old="$(cookie a)"
  req a POST /logout
  expect_redirect
  req a GET /
  expect_page active anonymous 1 "logged out"
  id3="$(session_id a)"
  [ "$id3" != "$id2" ] || fail "the cookie after logout is a new session" "an id other than $id2" "$id3"
  req a GET /
  expect_page active anonymous 2 -
  req - GET / -H "Cookie: session=$old"
  expect_page expired anonymous 1 -

  # 5. Forged session headers from a client never reach the app.
  step "5. a client sends X-Session: {\"user\":\"mallory\"} and X_Session_Status: active"
  req - GET / -H 'X-Session: {"user":"mallory","visits":41}' -H 'X_Session_Status: active' \
    -H 'X-Session-Flash: {"message":"forged"}' -H 'X-Session-Owner: "mallory"'
  expect_page none anonymous 1 -

  # 6. The rest of the contract: 400 on a missing user, 404 elsewhere, any name round-trips.
  step "6. POST /login without a user answers 400"
  req - POST /login --data-urlencode user=
  expect_status 400
  req - POST /login -H 'Content-Type: application/x-www-form-urlencoded'
  expect_status 400
  step "6. anything else answers 404"
  req - GET /no-such-page
  expect_status 404
  step "6. a user name with quotes, non-ASCII and form metacharacters round-trips"
  local name="Zoë \"O'Brien\" <b>&amp; a+b=c%41 ✓"
  req c POST /login --data-urlencode "user=$name"
  expect_redirect
  req c GET /
  expect_page active "$name" 1 "welcome $name"

  echo "PASS $stack (app up in ${app_secs}s, flow in $((SECONDS - started - app_secs))s)" >"$result"
}

# ---------------------------------------------------------------------------------------
passed=0 failed=0 skipped=0 child=""
# Interrupted: let the running stack's subshell stop its app and sidecar, then leave.
interrupted() {
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  echo "examples/test.sh: interrupted; logs in $work" >&2
  exit 130
}
trap interrupted INT TERM
for stack in "${stacks[@]}"; do
  # In the background and waited for, so a signal reaches the trap at once.
  (set -e; run_stack "$stack") &
  child=$!
  wait "$child" || true
  child=""
  line="$(cat "$work/$stack/result" 2>/dev/null || echo "FAIL $stack: ended without a result")"
  echo "$line"
  case "$line" in
    PASS*) passed=$((passed + 1)) ;;
    SKIP*) skipped=$((skipped + 1)) ;;
    *) failed=$((failed + 1)) ;;
  esac
done

if [ "$failed" -gt 0 ] || [ "${EXAMPLES_KEEP:-0}" = 1 ]; then
  echo "logs, configs and cookie jars: $work"
else
  rm -rf "$work"
fi
echo "examples: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
