#!/usr/bin/env bash
# make bench: the control-plane benchmark table. Each row is a go test
# benchmark; the raw `go test -bench` output is kept in bench-out/raw.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p bench-out
raw=bench-out/raw.txt
: >"$raw"

# The PyTorch DDP reference of BenchmarkVsDDP runs on Debian's PyTorch
# (the same libtorch 1.13 as lavit's shim), for Debian's own python3.
if ! /usr/bin/python3 -c 'import torch' >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: the DDP reference needs python3-torch; please install it" >&2
    exit 1
  fi
  echo "bench: installing python3-torch (the DDP reference)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch >/dev/null
fi

echo "running benchmarks (about 15 minutes)..." >&2
: >bench-out/allreduce.txt
go test -run '^$' -bench 'BenchmarkHeartbeat|BenchmarkRegister' -benchtime 3s ./coordinator/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkFailover' -benchtime 10x -timeout 10m ./coordinator/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkLeaderCPU' -benchtime 1x -timeout 10m ./internal/e2e/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkStepOverhead' -benchtime 1x -timeout 10m ./trainer/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkOverlap' -benchtime 3x -timeout 10m ./trainer/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkBitwiseStep' -benchtime 3x -timeout 10m ./trainer/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkRead' -benchtime 3x -timeout 10m ./shards/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkCheckpointTiny' -benchtime 20x ./worker/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkCheckpoint1GiB' -benchtime 2x -timeout 15m ./checkpoint/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkTrainScaling' -benchtime 1x -timeout 15m ./internal/e2e/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkVsDDP' -benchtime 3x -timeout 30m ./internal/e2e/ | tee -a "$raw" >&2
LAVIT_REPORT_DIR="$PWD/bench-out" go test -run '^$' -bench 'BenchmarkOpProfile' -benchtime 1x -timeout 10m ./trainer/ | tee -a "$raw" >&2
go test -run '^$' -bench 'BenchmarkNCCLVsRing' -benchtime 1x -timeout 15m ./internal/e2e/ | tee -a "$raw" >&2
LAVIT_REPORT_DIR="$PWD/bench-out" go test -run '^$' -bench 'BenchmarkMemory' -benchtime 1x -timeout 60m ./trainer/ | tee -a "$raw" >&2
for w in 2 3 4; do
  bin/lavit-worker bench allreduce --world "$w" --sizes 1KiB..256MiB --iters 16 | tee -a bench-out/allreduce.txt >&2
done

# Print "name | metric value unit ..." rows as a table.
echo
echo "| benchmark | results |"
echo "| --- | --- |"
grep '^Benchmark' "$raw" | while read -r name iters nsop _ rest; do
  metrics=$(echo "$rest" | awk '{ out=""; for (i=1; i<NF; i+=2) out = out sprintf("%s %s, ", $i, $(i+1)); sub(/, $/, "", out); print out }')
  echo "| ${name%-*} | $metrics |"
done
echo
echo "all-reduce sweep (nccl-tests columns, with the transfer-only limit): bench-out/allreduce.txt"
echo "operators per step, lavit against the PyTorch DDP reference (BenchmarkOpProfile): bench-out/profile.md"
echo "memory per rank by ZeRO stage and activation checkpointing (BenchmarkMemory): bench-out/memory.md"
echo "machine: $(nproc) cores, $(go env GOOS)/$(go env GOARCH), $(go version | awk '{print $3}'); raw output in $raw"
