#!/usr/bin/env bash
# Checks the deployment files (docs/operations.md):
#   1. deploy/systemd/session-sidecar.service: `systemd-analyze verify` (no output
#      allowed) and `systemd-analyze security --offline` (exposure must stay <= 1.1);
#   2. deploy/kubernetes/*.yaml: kubernetes-validate --strict (pinned in
#      deploy/kubernetes/validate-requirements.txt, installed into target/ops-venv)
#      against Kubernetes 1.30 (the oldest the manifests target: preStop sleep) and 1.37;
#   3. the ConfigMap's sidecar.yaml through `session-sidecar check`, and
#   4. deploy/systemd/try-unit.sh (the unit run under a throwaway systemd), both only
#      when a built binary is found (SIDECAR_BIN, else target/debug or target/release);
#      OPS_TRY_UNIT=0 skips 4.
# Installs what is missing (Debian's systemd package for systemd-analyze,
# python3-venv) when run as root. Fails loudly: any error exits non-zero.
#
#   ./scripts/check-ops.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
die() { echo "check-ops: FAIL: $*" >&2; exit 1; }

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    die "missing $* — install with: sudo apt-get install -y $*"
  fi
}

# --- 1. systemd unit -------------------------------------------------------------
command -v systemd-analyze >/dev/null || apt_install systemd
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify insists that ExecStart= binaries exist: check a copy whose binary path points
# at a stub, everything else unchanged.
printf '#!/bin/sh\nexit 0\n' >"$tmp/session-sidecar"
chmod +x "$tmp/session-sidecar"
sed "s|/usr/local/bin/session-sidecar|$tmp/session-sidecar|g" \
  deploy/systemd/session-sidecar.service >"$tmp/session-sidecar.service"
echo "==> systemd-analyze verify deploy/systemd/session-sidecar.service"
if ! out=$(systemd-analyze verify "$tmp/session-sidecar.service" 2>&1) || [ -n "$out" ]; then
  echo "$out" >&2
  die "systemd-analyze verify"
fi
echo "==> systemd-analyze security --offline=yes (threshold 1.1)"
if ! out=$(systemd-analyze security --offline=yes --threshold=11 --no-pager \
  "$tmp/session-sidecar.service" 2>&1); then
  echo "$out" >&2
  die "systemd-analyze security: exposure above 1.1 (or it failed)"
fi
echo "$out" | grep -E '✗|Overall exposure' | sed 's/[[:space:]]\+$//'

# --- 2. Kubernetes manifests -----------------------------------------------------
venv=target/ops-venv
req=deploy/kubernetes/validate-requirements.txt
stamp="$venv/.requirements"
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  echo "==> installing kubernetes-validate into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue   # not an API object
  manifests+=("$f")
done
for k in 1.30.0 1.37.0; do
  echo "==> kubernetes-validate --strict -k $k (${#manifests[@]} files)"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "${manifests[@]}" \
    || die "kubernetes-validate against $k"
done

# --- 3./4. with a built binary ---------------------------------------------------
bin=${SIDECAR_BIN:-}
if [ -z "$bin" ]; then
  for b in target/debug/session-sidecar target/release/session-sidecar; do
    [ -x "$b" ] && { bin=$b; break; }
  done
fi
if [ -z "$bin" ]; then
  echo "==> no session-sidecar binary: cargo build --bin session-sidecar"
  cargo build --locked --bin session-sidecar
  bin=target/debug/session-sidecar
fi
{
  echo "==> $bin check on the ConfigMap's sidecar.yaml"
  "$venv/bin/python" -c 'import sys, yaml
docs = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
sys.stdout.write(docs["data"]["sidecar.yaml"])' >"$tmp/sidecar.yaml"
  SESSION_SECRET=$("$bin" gen-secret) ADMIN_TOKEN=$("$bin" gen-secret) REDIS_PASSWORD=x \
    "$bin" check --config "$tmp/sidecar.yaml" >/dev/null || die "the ConfigMap's sidecar.yaml"
  if [ "${OPS_TRY_UNIT:-1}" = 0 ]; then
    echo "==> OPS_TRY_UNIT=0: skipped try-unit.sh"
  elif [ "$(id -u)" != 0 ]; then
    echo "==> not root: skipped try-unit.sh (systemd in namespaces needs root)"
  else
    echo "==> deploy/systemd/try-unit.sh $bin"
    if ! deploy/systemd/try-unit.sh "$bin" >"$tmp/try-unit.log" 2>&1; then
      cat "$tmp/try-unit.log" >&2
      die "try-unit.sh"
    fi
    grep -E '^(==|try-unit)' "$tmp/try-unit.log"
  fi
}
echo "check-ops: OK ($(($(date +%s) - start)) s)"
