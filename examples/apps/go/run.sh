#!/usr/bin/env bash
# Runs the Go example on 127.0.0.1:${APP_PORT:-8000} (examples/README.md). Needs the
# Debian package golang-go (Go 1.19 or later), installed here when run as root. Standard
# library only: nothing is downloaded; the build cache and the binary stay in this
# directory, and the binary is rebuilt only when a source is newer.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y golang-go
  else
    echo "run.sh: go is missing; install it as root: apt-get install -y golang-go" >&2
    exit 1
  fi
fi
export GOPATH="$PWD/.gopath" GOCACHE="$PWD/.gocache" GOPROXY=off GOFLAGS= \
  GOTOOLCHAIN=local GO111MODULE=on CGO_ENABLED=0
if [ ! -x example-app ] || [ main.go -nt example-app ] || [ go.mod -nt example-app ]; then
  go build -o example-app .
fi
export APP_PORT="${APP_PORT:-8000}"
exec ./example-app
