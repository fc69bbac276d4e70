#!/usr/bin/env bash
# The GPU check, in one go (under 8 minutes), on a machine with CUDA and
# PyTorch but no Go:
#   1. build the libtorch shim against the installed PyTorch;
#   2. the trainer on cuda:0: TestCUDAMatchesCPU (CPU and GPU losses agree),
#      and the step-time table (tiny stage 1 and 2, a ~250 M Llama-shaped LM);
#   3. NCCL from the Go binaries: a world-1 all-reduce and broadcast, and
#      lavit-worker bench allreduce (busbw);
#   4. through the real lavit-coord and lavit-worker binaries: a tiny
#      stage-1 run on cuda:0 with collective.backend nccl (world 1,
#      PyTorch's libnccl), and a two-worker run with CUDA models on the ring
#      on the same GPU (gradients staged through pinned host memory);
#   5. the medium LM's training step in PyTorch eager, for the table.
# It prints the table at the end and leaves everything in build/gpu/out.
#
# Prepare here:  make gpu-bundle        (Go binaries + JSON header in build/gpu)
# Run there:     bash deploy/gpu/gpu-check.sh
#
# NOTE: written without a GPU: no session that wrote it had one. Expect to
# fix paths on the first run; each part reports and the script goes on.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=build/gpu
rep=$out/out
mkdir -p "$rep"
fail=0
part() { echo; echo "==> $*"; }
bad() { echo "FAILED: $*"; fail=1; }

torch_dir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
abi=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
echo "libtorch: $torch_dir (cxx11 abi $abi), $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

part "1. the shim against PyTorch's libtorch"
start=$(date +%s)
if ! g++ -O2 -std=c++17 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI="$abi" \
  -I"$out/include" -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include" \
  trainer/csrc/models.cpp trainer/csrc/shim.cpp \
  -L"$torch_dir/lib" -Wl,-rpath,"$torch_dir/lib" -Wl,--no-as-needed -ltorch -ltorch_cpu -ltorch_cuda -lc10 -lc10_cuda -Wl,--as-needed \
  -o "$out/liblavit_torch.so" 2>"$rep/shim-build.log"; then
  tail -40 "$rep/shim-build.log"
  echo "the shim did not build: nothing else can run"
  exit 1
fi
echo "shim built in $(( $(date +%s) - start ))s"
shim="$PWD/$out/liblavit_torch.so"

part "2. the trainer on cuda:0"
LAVIT_TORCH_LIB="$shim" LAVIT_TEST_DEVICE=cuda:0 LAVIT_REPORT_DIR="$PWD/$rep" timeout 300 \
  "$out/trainer.test" -test.run 'TestCUDAMatchesCPU|TestFlatGradients|TestBadInput|TestGPUStepTimes' -test.v -test.count=1 \
  || bad "trainer tests on cuda:0"

part "3. NCCL from the Go binaries"
# PyTorch ships libnccl.so.2 in nvidia/nccl/lib (pip wheel) or torch/lib.
nccl=$(python3 - <<'PY'
import glob, os, torch
cands = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libnccl.so*"))
try:
    import nvidia.nccl
    cands += glob.glob(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so*"))
except Exception:
    pass
print(cands[0] if cands else "")
PY
)
echo "libnccl: ${nccl:-not found}"
if [ -n "$nccl" ]; then
  export LD_LIBRARY_PATH="$(dirname "$nccl"):$torch_dir/lib:${LD_LIBRARY_PATH:-}"
  LAVIT_TEST_NCCL=1 LAVIT_NCCL_LIB="$nccl" timeout 120 "$out/nccl.test" -test.run 'TestGPU' -test.v -test.count=1 || bad "nccl world-1 test"
  timeout 120 "$out/lavit-worker" bench allreduce --backend nccl --nccl-lib "$nccl" --world 1 --sizes 1MiB,64MiB,256MiB | tee "$rep/nccl-bench.txt" || bad "nccl bench"
else
  bad "no libnccl.so.2 in PyTorch's install"
fi

part "4. runs through lavit-coord and lavit-worker on cuda:0"
work=$(mktemp -d)
coord="$out/lavit-coord"
"$coord" up --data-dir "$work/coord" --file-root "$work" --log-level warn >"$rep/coord.log" 2>&1 &
coord_pid=$!
for _ in $(seq 100); do
  python3 -c 'import ssl, urllib.request; urllib.request.urlopen("https://127.0.0.1:8080/readyz", timeout=1, context=ssl._create_unverified_context())' 2>/dev/null && break
  sleep 0.2
done
export LAVIT_TOKEN=$(cat "$work/coord/token")
"$coord" shards synth --out "file://$work/data" --samples 2000 --per-shard 250 >/dev/null
worker() { # worker ID: a worker on cuda:0
  "$out/lavit-worker" join --id "$1" --device cuda:0 --torch-lib "$shim" ${nccl:+--nccl-lib "$nccl"} \
    --collective-listen 127.0.0.1:0 --log-level info >"$rep/$1.log" 2>&1 &
  echo $!
}
await() { # await RUN SECONDS: wait for the run to end, print its summary
  local st=""
  for _ in $(seq $(( $2 * 2 ))); do
    st=$("$coord" run show "$1" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
    case "$st" in COMPLETED|FAILED|CANCELLED) break ;; esac
    sleep 0.5
  done
  "$coord" run show "$1" | tee -a "$rep/runs.txt"
  [ "$st" = COMPLETED ]
}
submit() { "$coord" run submit -f configs/tiny-stage1.yaml --json --set "data.url=file://$work/data" --set data.eval_url= \
  --set "checkpoint.url=file://$work/ckpt" --set steps=120 --set stage1.phase_a_steps=80 --set stage1.kmeans_batches=2 \
  --set metrics.every_steps=20 --set device=cuda "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
g0=$(worker g0)
run1=$(submit --set collective.backend=nccl --set min_workers=1 --set max_workers=1)
await "$run1" 180 || bad "the world-1 NCCL run on cuda:0"
g1=$(worker g1)
run2=$(submit --set collective.backend=ring --set min_workers=2 --set max_workers=2)
await "$run2" 240 || bad "the two-worker ring run with CUDA models"
kill "$g0" "$g1" 2>/dev/null; wait "$g0" "$g1" 2>/dev/null
kill "$coord_pid"; wait "$coord_pid" 2>/dev/null
rm -rf "$work"

part "5. the medium LM in PyTorch eager"
timeout 180 python3 deploy/gpu/reference_step.py --device cuda:0 | tee "$rep/reference.md" || bad "the PyTorch reference step"

part "the table"
cat "$rep/gpu-steps.md" "$rep/reference.md" 2>/dev/null
echo
[ -f "$rep/nccl-bench.txt" ] && cat "$rep/nccl-bench.txt"
grep -h "step time" "$rep/runs.txt" 2>/dev/null
echo
[ "$fail" = 0 ] && echo "gpu-check: every part passed" || echo "gpu-check: some parts FAILED (above)"
exit "$fail"
