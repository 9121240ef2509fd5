#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (docs/fuzzing.md): builds every target of
# fuzz/ once (cargo-fuzz, libFuzzer, on the stable toolchain with RUSTC_BOOTSTRAP=1),
# runs each for SECONDS, prints one line per target (executions, coverage) and exits
# non-zero if any target crashed, failed a property or hung (the input is saved under
# fuzz/artifacts/<target>/ and its path printed).
#
#   scripts/fuzz.sh [SECONDS]        # default 60 per target
#
# Environment:
#   FUZZ_TARGETS="cookie config"   only these targets (default: every target)
#   FUZZ_JOBS=2                    targets run at once (default 1)
#   FUZZ_SANITIZER=address         cargo-fuzz sanitizer (default none: the crate forbids
#                                  unsafe code; see docs/fuzzing.md)
#
# Seeds are read from fuzz/corpus/<target>/ and never written; what a run discovers goes
# to fuzz/out/corpus/<target>/ (ignored by git) and seeds the next run. Logs are in
# fuzz/out/logs/. As root on Debian it installs the C++ compiler libFuzzer needs; it
# installs cargo-fuzz with `cargo install --locked` when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
jobs="${FUZZ_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
if ! command -v c++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing g++ (libFuzzer is C++)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "no C++ compiler: install one (sudo apt-get install -y g++)" >&2
    exit 1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags (-Z...) to rustc; RUSTC_BOOTSTRAP lets the
# stable toolchain accept them (docs/fuzzing.md#engine).
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fetch --locked -q
host="$(rustc -vV | sed -n 's/^host: //p')"
start=$(date +%s)
echo "==> building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -s "$sanitizer" --target "$host"
echo "==> built in $(($(date +%s) - start))s"

bin_dir="target/$host/release"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
mkdir -p out/logs

run_one() {
  local t="$1" log="out/logs/$1.log"
  local args=(-max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
    -artifact_prefix="artifacts/$t/")
  [ -f "dict/$t.dict" ] && args+=(-dict="dict/$t.dict")
  mkdir -p "out/corpus/$t" "artifacts/$t" "corpus/$t"
  local rc=0 began
  began=$(date +%s)
  "$bin_dir/$t" "${args[@]}" "out/corpus/$t" "corpus/$t" >"$log" 2>&1 || rc=$?
  echo "$rc" >"out/logs/$t.rc"
  echo "$(($(date +%s) - began))" >"out/logs/$t.secs"
}

summary() {
  local t="$1" log="out/logs/$1.log" rc
  rc="$(cat "out/logs/$t.rc")"
  local execs cov ft secs_run artifact
  # Executions: the final stats, or the last status line (`#N ...`) before a crash.
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  [ -n "$execs" ] || execs="$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -E 's/^#([0-9]+).*/\1/')"
  # The last status line (`#N DONE cov: C ft: F ...`, or the last before a crash).
  cov="$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 | sed -E 's/.* cov: ([0-9]+).*/\1/')"
  ft="$(grep -E '^#[0-9]+.*ft: ' "$log" | tail -1 | sed -E 's/.* ft: ([0-9]+).*/\1/')"
  secs_run="$(cat "out/logs/$t.secs")"
  artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
  local status=ok
  if [ "$rc" != 0 ] || [ -n "$artifact" ]; then
    status="FAILED (exit $rc) artifact: fuzz/${artifact:-?} log: fuzz/$log"
  fi
  printf '%-16s execs=%-10s secs=%-5s cov=%-6s ft=%-7s %s\n' \
    "$t" "${execs:-?}" "${secs_run:-?}" "${cov:-?}" "${ft:-?}" "$status"
  [ "$status" = ok ]
}

echo "==> running every target for ${secs}s ($jobs at a time)"
running=0
for t in $targets; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=0
echo "==> results ($(date -u +%Y-%m-%dT%H:%MZ))"
for t in $targets; do
  summary "$t" || failed=1
done
for t in $targets; do
  if [ "$(cat "out/logs/$t.rc")" != 0 ]; then
    echo "--- $t: $(grep -m1 -E "panicked at|ERROR: libFuzzer|SUMMARY" "out/logs/$t.log" || true)"
    grep -A3 -m1 "panicked at" "out/logs/$t.log" | tail -3 || true
  fi
done
echo "==> total $(($(date +%s) - start))s"
exit "$failed"
