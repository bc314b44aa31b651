#!/usr/bin/env bash
# Builds and runs one CUDA-on-CPU emulation (tests/emulate/cuda_on_cpu.h says what it can and cannot
# catch): the op's CUDA kernels compiled by g++ and checked against its CPU twin. No GPU or nvcc.
#   tests/emulate/run.sh fft|fftconv|butterfly [driver arguments...]    (~30-70 s each with g++)
# MMM_EMULATE_BUILD_DIR=dir keeps the build there (default: a temporary directory); CXX picks the
# compiler. The opt-in tests (MMM_EMULATE=1: tests/test_{fft,fftconv,butterfly}.py, -k cpu_threads)
# call this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
op="${1:?usage: tests/emulate/run.sh fft|fftconv|butterfly [driver arguments...]}"
shift
out="${MMM_EMULATE_BUILD_DIR:-$(mktemp -d)}"
mkdir -p "$out"
cxx=("${CXX:-g++}" -std=c++20 -I"$here" -I"$repo/csrc")
case "$op" in
  # The kernels have MMM_FFT_HOST_EMULATION hooks; the drivers mirror the launchers' paths.
  fft | fftconv)
    "${cxx[@]}" -O1 -pthread "$here/$op.cpp" -o "$out/$op" ;;
  # The real launcher, with its CUDA-only lines rewritten to the emulation's; one thread per block
  # under ASan/UBSan (shared memory an exact-size heap block per launch, so overruns are caught).
  butterfly)
    src="$repo/csrc/butterfly"
    sed -e 's|#include "core/cuda_utils.cuh"|#include "cuda_on_cpu.h"|' \
        -e 's|extern __shared__ float4 bf_smem_fwd\[\];|float4* bf_smem_fwd = static_cast<float4*>(emu::smem);|' \
        -e 's|extern __shared__ float4 bf_smem_bwd\[\];|float4* bf_smem_bwd = static_cast<float4*>(emu::smem);|' \
        "$src/butterfly_kernel.cuh" > "$out/kernel.h"
    sed -e 's|#include <cuda_runtime.h>|#include "cuda_on_cpu.h"|' \
        -e 's|#include "butterfly/butterfly_kernel.cuh"|#include "kernel.h"|' \
        -e 's|kernel<<<\(.*\), \(threads_for(P)\), smem, stream>>>(P);|emu_launch(1, kernel, \1, \2, smem, P);|' \
        -e 's|butterfly_reduce_kernel<kCx><<<grid, 256, 0, stream>>>(|emu_launch(1, butterfly_reduce_kernel<kCx>, grid, 256, 0, |' \
        "$src/butterfly_launch.cu" > "$out/launch.cpp"
    # Every launch and the dynamic shared memory must have gone through the emulation.
    if grep -q '<<<' "$out/launch.cpp"; then echo "run.sh: a kernel launch was not rewritten" >&2; exit 1; fi
    grep -q 'emu::smem' "$out/kernel.h" || { echo "run.sh: shared memory was not rewritten" >&2; exit 1; }
    "${cxx[@]}" -I"$out" -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
      "$out/launch.cpp" "$here/butterfly.cpp" "$src/butterfly_cpu.cpp" -o "$out/$op" ;;
  *) echo "run.sh: unknown op '$op' (fft, fftconv, butterfly)" >&2; exit 2 ;;
esac
exec "$out/$op" "$@"
