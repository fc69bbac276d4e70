#!/usr/bin/env bash
# Installs what lavit's build and tests need, and nothing that is already
# there. Safe to run again and again (make deps).
set -euo pipefail
cd "$(dirname "$0")/../.."

need_go="1.26"
if ! command -v go >/dev/null 2>&1; then
  echo "deps: Go is not installed; lavit needs Go ${need_go} or newer (https://go.dev/dl/)" >&2
  exit 1
fi
have_go=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]; then
  echo "deps: Go ${have_go} is too old; lavit needs Go ${need_go} or newer" >&2
  exit 1
fi

# Debian packages: a C compiler (the race detector and the worker's cgo),
# curl (the demo's health checks).
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: please install: ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Go modules (a no-op when the module cache already has them).
go mod download
