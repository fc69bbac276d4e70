#!/usr/bin/env bash
# The trainer's GPU check, in one go, on a machine with CUDA and PyTorch but
# no Go: build the shim against PyTorch's bundled libtorch, then run the
# trainer test binary built elsewhere (make gpu-bundle) on cuda:0: the tiny
# stage-1 and stage-2 steps, compared with the CPU, and timed; then the
# NCCL backend from the Go binary: a world-1 all-reduce and broadcast on
# cuda:0 (PyTorch's libnccl.so.2), and lavit-worker bench allreduce.
#
# Prepare here:  make gpu-bundle        (test binary + JSON header in build/gpu)
# Run there:     bash deploy/gpu/gpu-check.sh
#
# NOTE: not yet run on a GPU (no device was available to the session that
# wrote it); expect to fix paths on the first run.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/gpu
torch_dir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
abi=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
echo "libtorch: $torch_dir (cxx11 abi $abi), $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

start=$(date +%s)
g++ -O2 -std=c++17 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI="$abi" \
  -I"$out/include" -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include" \
  trainer/csrc/models.cpp trainer/csrc/shim.cpp \
  -L"$torch_dir/lib" -Wl,-rpath,"$torch_dir/lib" -Wl,--no-as-needed -ltorch -ltorch_cpu -ltorch_cuda -lc10 -lc10_cuda -Wl,--as-needed \
  -o "$out/liblavit_torch.so"
echo "shim built in $(( $(date +%s) - start ))s"

LAVIT_TORCH_LIB="$PWD/$out/liblavit_torch.so" LAVIT_TEST_DEVICE=cuda:0 \
  "$out/trainer.test" -test.run 'TestCUDAMatchesCPU|TestFlatGradients|TestBadInput' -test.v -test.count=1

# NCCL through the Go binary: PyTorch ships libnccl.so.2 in nvidia/nccl/lib
# (pip wheel) or torch/lib; the cgo loader dlopens it at run time.
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
  LAVIT_TEST_NCCL=1 LAVIT_NCCL_LIB="$nccl" "$out/nccl.test" -test.run 'TestGPU' -test.v -test.count=1
  "$out/lavit-worker" bench allreduce --backend nccl --world 1 --size 64MiB || true
fi
