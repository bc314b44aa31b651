#!/usr/bin/env bash
# Host emulation of the butterfly CUDA kernels under ASan/UBSan (see shim.h, driver.cpp).
# usage: csrc/butterfly/emulate/run.sh [BUILD_DIR]      (no GPU or nvcc needed; ~1 min with g++)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
src="$repo/csrc/butterfly"
# The kernel and launcher sources, with the CUDA-only lines swapped for the shim's.
sed -e 's|#include "core/cuda_utils.cuh"|#include "shim.h"|' \
    -e 's|extern __shared__ float4 bf_smem_fwd\[\];|float4* bf_smem_fwd = g_smem_ptr;|' \
    -e 's|extern __shared__ float4 bf_smem_bwd\[\];|float4* bf_smem_bwd = g_smem_ptr;|' \
    "$src/butterfly_kernel.cuh" > "$out/kernel.h"
sed -e 's|#include <cuda_runtime.h>|#include "shim.h"|' \
    -e 's|#include "butterfly/butterfly_kernel.cuh"|#include "kernel.h"|' \
    -e 's|kernel<<<\(.*\), \(threads_for(P)\), smem, stream>>>(P);|emu_launch(kernel, \1, \2, smem, P);|' \
    -e 's|butterfly_reduce_kernel<kCx><<<grid, 256, 0, stream>>>(|emu_launch(butterfly_reduce_kernel<kCx>, grid, 256, 0, |' \
    "$src/butterfly_launch.cu" > "$out/launch.cpp"
# Every launch must have gone through the shim.
if grep -q '<<<' "$out/launch.cpp"; then echo "run.sh: a kernel launch was not rewritten" >&2; exit 1; fi
grep -q 'g_smem_ptr' "$out/kernel.h" || { echo "run.sh: shared memory was not rewritten" >&2; exit 1; }
cp "$src/emulate/shim.h" "$out/"
"${CXX:-g++}" -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -I"$out" -I"$repo/csrc" "$out/launch.cpp" "$src/emulate/driver.cpp" "$src/butterfly_cpu.cpp" -o "$out/emulate"
"$out/emulate"
