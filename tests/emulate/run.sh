#!/usr/bin/env bash
# Builds and runs one CUDA-on-CPU emulation (tests/emulate/cuda_on_cpu.h says what it can and cannot
# catch): the op's CUDA kernels compiled by g++ and checked against its CPU twin. No GPU or nvcc.
#   tests/emulate/run.sh fft|fftconv|butterfly [driver arguments...]    (~30-70 s each with g++;
#     butterfly one fiber per CUDA thread, fft and fftconv as the drivers choose)
#   tests/emulate/run.sh attention [quick|steady] | block_diag_matmul [quick|steady]    (tensor-core kernels: the PTX
#     modelled by ptx_on_cpu.h, one fiber per CUDA thread; ~1 min build, 1-3 min run;
#     MMM_EMULATE_ATTENTION_DIMS=all adds head dims 32, 128, 192, 256, as the tests do: ~1 min more;
#     steady: benchmark-like shapes instead of the test cases, for the counts mode's model)
#   tests/emulate/run.sh fused_add_norm [quick] | hadamard    (warp shuffles and barriers, one
#     fiber per CUDA thread; fused_add_norm ~2 min build, ~15 s run; hadamard ~30 s in all)
#   MMM_EMULATE_SANITIZE=thread tests/emulate/run.sh races ordered|block|warp|phase|cta|deadlock    (the
#     emulator's own check: the races TSan must report, tests/test_emulation.py; seconds)
# MMM_EMULATE_SANITIZE=thread builds with ThreadSanitizer instead of AddressSanitizer/UBSan: a
# data race between the emulated threads of a block (shared or global memory touched by two
# threads, one writing, with no __syncthreads or __syncwarp between them; as on the GPU, a
# shuffle, ldmatrix or mma does not order memory) is reported even when the host scheduler made
# it harmless, and so is global memory touched by two CTAs (one writing, not atomically): two
# blocks run at once. fft and fftconv, otherwise unsanitised, get it too.
# MMM_EMULATE_SANITIZE=counts builds with no sanitizer but every memory access of the kernels
# reported to memory_counts.h, which counts the shared-memory wavefronts (bank conflicts) and
# global-memory sectors (coalescing) of their plain loads and stores (ldmatrix's and cp.async's
# bank conflicts are counted in every mode) and fails the run on a kernel line that is
# systematically costly and not marked "known bank conflict" / "known uncoalesced".
# MMM_EMULATE_BUILD_DIR=dir keeps the build there (default: a temporary directory; the CPU twin's
# object is reused when newer than its sources), MMM_EMULATE_TWIN_DIR=dir the CPU twin's object
# (default: the build directory); CXX picks the compiler. The opt-in tests (MMM_EMULATE=1:
# tests/test_{fft,fftconv,butterfly,attention,block_diag_matmul,fused_add_norm,hadamard}.py, -k cpu_threads)
# call this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
op="${1:?usage: tests/emulate/run.sh fft|fftconv|butterfly|attention|block_diag_matmul|fused_add_norm|hadamard|races [driver arguments...]}"
shift
out="${MMM_EMULATE_BUILD_DIR:-$(mktemp -d)}"
# The CPU twins' objects (no sanitizer: the same in every mode) may live elsewhere, so that the
# three modes of a test session build them once (tests/conftest.py).
twins="${MMM_EMULATE_TWIN_DIR:-$out}"
mkdir -p "$out" "$twins"
cxx=("${CXX:-g++}" -std=c++20 -I"$here" -I"$repo/csrc")
# fft_san: what fft and fftconv (no sanitizer by default) are built with.
case "${MMM_EMULATE_SANITIZE:-address}" in
  address) san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined) fft_san=() ;;
  thread) san=(-fsanitize=thread) fft_san=("${san[@]}")
    export TSAN_OPTIONS="halt_on_error=1 allow_addr2line=1 ${TSAN_OPTIONS:-}" ;;
  # Every memory access calls memory_counts.h's counters (no sanitizer runtime).
  counts) san=(-DMMM_EMU_COUNTS -fno-tree-sra -fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0
    --param asan-stack=0 --param asan-globals=0) fft_san=("${san[@]}") ;;
  *) echo "run.sh: MMM_EMULATE_SANITIZE: address (default), thread or counts" >&2; exit 2 ;;
esac

# The PTX drivers (and fft, fftconv): copies of csrc headers in $out/inc, with (1) each PTX
# wrapper's definition renamed (`void ldmatrix_x4(` -> `void ldmatrix_x4_ptx(`, never called) so
# that the kernels' calls reach ptx_on_cpu.h's models, (2) `kernel<<<grid, threads, smem,
# stream>>>(args);` -> emu_launch(0, ...) (one fiber per CUDA thread), (3) `extern __shared__
# T name[]` -> the block's exact-size dynamic shared memory, (4) `__shared__ T name[...];` ->
# emu::block_static, an array per running block (cuda_on_cpu.h). tests/emulate/shadow stands in
# for the CUDA headers.
ptx_cxx=("${CXX:-g++}" -std=c++20 -I"$here/shadow" -I"$here" -I"$out/inc" -I"$repo/csrc" -DMMM_EMU_REAL_CUDA_UTILS -pthread)
ptx_wrappers='ldmatrix_x4|ldmatrix_x4_trans|ldsm_x4|ldsm_x4_trans|mma_m16n8k16|cp_async_16|cp_async_16_bytes|cp_async_commit|cp_async_wait|cluster_ctarank|cluster_arrive|cluster_wait|cluster_map|cluster_store_u32|cluster_load_u64|cluster_load_f4'
rewrite() {
  local f
  for f in "$@"; do
    mkdir -p "$out/inc/$(dirname "$f")"
    perl -0pe '
      s/\b(void|unsigned|uint32_t|uint64_t|float4) ('"$ptx_wrappers"')\(/$1 $2_ptx(/g;
      s/([\w:]+(?:<[^<>;]*>)?)\s*<<<([^;]*?),\s*([^,;]*),\s*([^,;]*),\s*stream>>>\(([^;]*)\);/emu_launch(0, $1, $2, $3, $4, $5);/g;
      s/extern __shared__ (?:__align__\(\d+\) )?([\w ]*?\w) (\w+)\[\]/$1* $2 = static_cast<$1*>(emu::smem)/g;
      s/\b__shared__ (?:__align__\(\d+\) )?([\w:<>, ]*?\w) (\w+)((?:\[[^\]\n]+\])+);/auto& $2 = emu::block_static<$1$3>([] {});/g;
    ' "$repo/csrc/$f" > "$out/inc/$f"
    # Every launch and shared array rewritten, and inline PTX only in renamed wrappers.
    if grep -n '<<<\|__shared__' "$out/inc/$f" >&2; then echo "run.sh: $f: not rewritten (above)" >&2; exit 1; fi
    if perl -ne 'if (/^\s*__device__.*?\b(\w+)\s*\(/) { $fn = $1 } if (/asm\s+volatile/ && $fn !~ /_ptx$/) { print "$ARGV: inline PTX in $fn\n"; $bad = 1 } END { exit $bad }' "$out/inc/$f" >&2; then :; else
      echo "run.sh: $f: a PTX wrapper that ptx_on_cpu.h does not model" >&2; exit 1; fi
  done
}
# -g1 (line tables, no variable info) is all a sanitizer report needs, and compiles 15% faster.
# Compilations run in the background, two cores or more being the rule; wait_all waits for them
# (and, under set -e, stops at the first that failed).
pids=()
wait_all() {
  local p
  for p in "${pids[@]}"; do wait "$p"; done
  pids=()
}
# Compiles the source $2 into the object $1 (no sanitizers: the CPU twin is the reference, not
# under test) unless the object is newer than $2 and the other files named ($3..).
cached_object() {
  local obj="$1" src="$2" dep
  for dep in "${@:2}"; do
    if [ ! -e "$obj" ] || [ "$dep" -nt "$obj" ]; then "${cxx[@]}" -O1 -c "$src" -o "$obj" & pids+=($!); return; fi
  done
}
# link_driver FLAGS... -- FILES...: compiles every .cpp of FILES with the compiler command FLAGS,
# each in the background, then links them with the .o files of FILES into $out/$op.
link_driver() {
  local flags=() objs=() f o
  while [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  for f; do
    case "$f" in
      *.o) objs+=("$f") ;;
      *) o="$out/obj_$(basename "${f%.*}").o" objs+=("$o"); "${flags[@]}" -c "$f" -o "$o" & pids+=($!) ;;
    esac
  done
  wait_all
  "${flags[@]}" "${objs[@]}" -o "$out/$op"
}
case "$op" in
  # The kernels have MMM_FFT_HOST_EMULATION hooks; the drivers mirror the launchers' paths.
  # fftconv's split forward uses core/cluster.cuh: its PTX wrappers (and core/mma.cuh's) renamed,
  # the shadow CUDA headers bring ptx_on_cpu.h's models.
  fft | fftconv)
    rewrite core/fft.cuh core/mma.cuh core/cluster.cuh fft/fft_kernel.cuh fftconv/fftconv_kernel.cuh
    "${CXX:-g++}" -std=c++20 -I"$here/shadow" -I"$here" -I"$out/inc" -I"$repo/csrc" -O1 -g1 -pthread "${fft_san[@]}" \
      "$here/$op.cpp" -o "$out/$op" ;;
  # The real launcher, with its CUDA-only lines rewritten to the emulation's; one fiber per
  # CUDA thread (shared memory an exact-size heap block per block, so overruns are caught).
  butterfly)
    src="$repo/csrc/butterfly"
    mkdir -p "$out/inc/butterfly"
    sed -e 's|#include "core/cuda_utils.cuh"|#include "cuda_on_cpu.h"|' \
        -e 's|extern __shared__ float4 bf_smem_fwd\[\];|float4* bf_smem_fwd = static_cast<float4*>(emu::smem);|' \
        -e 's|extern __shared__ float4 bf_smem_bwd\[\];|float4* bf_smem_bwd = static_cast<float4*>(emu::smem);|' \
        "$src/butterfly_kernel.cuh" > "$out/inc/butterfly/butterfly_kernel.cuh"
    sed -e 's|#include <cuda_runtime.h>|#include "cuda_on_cpu.h"|' \
        -e 's|kernel<<<\(.*\), \(threads_for(P)\), smem, stream>>>(P);|emu_launch(0, kernel, \1, \2, smem, P);|' \
        -e 's|butterfly_reduce_kernel<kCx><<<grid, 256, 0, stream>>>(|emu_launch(0, butterfly_reduce_kernel<kCx>, grid, 256, 0, |' \
        "$src/butterfly_launch.cu" > "$out/launch.cpp"
    # Every launch and the dynamic shared memory must have gone through the emulation.
    if grep -q '<<<' "$out/launch.cpp"; then echo "run.sh: a kernel launch was not rewritten" >&2; exit 1; fi
    grep -q 'emu::smem' "$out/inc/butterfly/butterfly_kernel.cuh" || { echo "run.sh: shared memory was not rewritten" >&2; exit 1; }
    "${CXX:-g++}" -std=c++20 -I"$here" -I"$out/inc" -I"$repo/csrc" -O1 -g1 -pthread "${san[@]}" \
      "$out/launch.cpp" "$here/butterfly.cpp" "$src/butterfly_cpu.cpp" -o "$out/$op" ;;
  # By default head dims 64 (forward ring of 5, 64-column swizzle) and 96 (ring of 4, 32-column
  # swizzle, the backward's 32-wide steps); MMM_EMULATE_ATTENTION_DIMS="all" (or a list such as
  # "64 128 256") compiles others too: 128 (the most used; 16-wide backward steps), 192 (one
  # 16-row slab per warp with Q in registers in the forward, 2 warps in the backward) and 256
  # (as 192, and dK/dV split over two CTAs) have paths of their own. The driver runs each case on the
  # smallest compiled head dim >= its D and skips cases that have none.
  attention)
    dims="${MMM_EMULATE_ATTENTION_DIMS:-64 96}"
    [[ "$dims" == all ]] && dims="32 64 96 128 192 256"
    mask=0 tus=("$out/attention_launch.cpp")
    printf '#include "attention/attention_launch.cu"\n' > "$out/attention_launch.cpp"
    for d in $dims; do
      case "$d" in 32) bit=0 ;; 64) bit=1 ;; 96) bit=2 ;; 128) bit=3 ;; 192) bit=4 ;; 256) bit=5 ;;
        *) echo "run.sh: MMM_EMULATE_ATTENTION_DIMS: no head dim $d (32 64 96 128 192 256)" >&2; exit 2 ;; esac
      mask=$((mask | (1 << bit))) tus+=("$out/attention_hdim$d.cpp")
      printf '#include "attention/instantiations/attention_hdim%s.cu"\n' "$d" > "$out/attention_hdim$d.cpp"
    done
    rewrite core/mma.cuh core/cp_async.cuh attention/attention_smem.cuh attention/attention_fwd_kernel.cuh \
      attention/attention_bwd_kernel.cuh attention/attention_launch_template.cuh attention/attention_launch.cu
    cached_object "$twins/attention_cpu.o" "$repo/csrc/attention/attention_cpu.cpp" "$repo/csrc/attention/attention_cpu_impl.h"
    link_driver "${ptx_cxx[@]}" -DMMM_ATTENTION_HEAD_DIMS_MASK=$mask -O1 -g1 "${san[@]}" -- \
      "${tus[@]}" "$here/attention.cpp" "$twins/attention_cpu.o" ;;
  # The block GEMM (tensor-core, split-K reduce, fp32 FMA) and the fused Monarch forward.
  block_diag_matmul)
    rewrite core/mma.cuh core/cp_async.cuh core/cluster.cuh block_diag_matmul/block_diag_matmul_kernel.cuh \
      block_diag_matmul/monarch_fused_kernel.cuh block_diag_matmul/monarch_cluster_kernel.cuh \
      block_diag_matmul/block_diag_matmul_launch.cu \
      block_diag_matmul/monarch_fused_launch.cu
    # The grid's y/z cap, a variable the driver lowers so that CTAs stride over tiles and blocks.
    perl -pi -e 's/\b65535\b/emu::grid_yz_limit/g' "$out/inc/block_diag_matmul/block_diag_matmul_launch.cu"
    grep -q 'emu::grid_yz_limit' "$out/inc/block_diag_matmul/block_diag_matmul_launch.cu"
    printf '#include "block_diag_matmul/block_diag_matmul_launch.cu"\n' > "$out/block_gemm_launch.cpp"
    printf '#include "block_diag_matmul/monarch_fused_launch.cu"\n' > "$out/monarch_fused_launch.cpp"
    src="$repo/csrc/block_diag_matmul"
    cached_object "$twins/block_gemm_cpu.o" "$src/block_diag_matmul_cpu.cpp" "$src/block_diag_matmul_cpu_impl.h" "$src/params.h" \
      "$repo/csrc/core/cpu_gemm.h"
    cached_object "$twins/monarch_fused_cpu.o" "$src/monarch_fused_cpu.cpp" "$src/monarch_fused_cpu_impl.h" "$src/monarch_fused.h" \
      "$repo/csrc/core/cpu_gemm.h"
    link_driver "${ptx_cxx[@]}" -O1 -g1 "${san[@]}" -- "$out/block_gemm_launch.cpp" "$out/monarch_fused_launch.cpp" \
      "$here/block_diag_matmul.cpp" "$twins/block_gemm_cpu.o" "$twins/monarch_fused_cpu.o" ;;
  # Every row shape (warp, 4 and 16 warps, looped), forward, backward, the dweight/dbias column
  # and reduce kernels; all three x dtypes (each its own translation unit, as in the build).
  fused_add_norm)
    d=fused_add_norm
    rewrite $d/fused_add_norm_kernel.cuh $d/fused_add_norm_launch_template.cuh $d/fused_add_norm_launch.cu \
      $d/instantiations/fused_add_norm_fp32.cu $d/instantiations/fused_add_norm_bf16.cu $d/instantiations/fused_add_norm_fp16.cu
    cached_object "$twins/fused_add_norm_cpu.o" "$repo/csrc/$d/fused_add_norm_cpu.cpp" "$repo/csrc/$d/fused_add_norm_cpu_impl.h" \
      "$repo/csrc/$d/params.h" "$repo/csrc/$d/activation.h"
    for f in fused_add_norm_launch instantiations/fused_add_norm_fp32 instantiations/fused_add_norm_bf16 \
      instantiations/fused_add_norm_fp16; do printf '#include "%s.cu"\n' "$d/$f" > "$out/fan_${f##*/}.cpp"; done
    link_driver "${ptx_cxx[@]}" -O1 -g1 "${san[@]}" -- "$out"/fan_*.cpp "$here/fused_add_norm.cpp" \
      "$twins/fused_add_norm_cpu.o" ;;
  # The single-CTA segment kernel (registers only, shared memory, above 48 KB), its rows split
  # over clusters of two (core/cluster.cuh's wrappers renamed: ptx_on_cpu.h models them) and, with
  # the opt-in shared memory lowered by the driver, the segment + column two-pass path.
  hadamard)
    rewrite core/mma.cuh core/cluster.cuh hadamard/hadamard_kernel.cuh hadamard/hadamard_launch.cu
    # The clusters' grid cap, a variable the driver lowers so that a cluster loops over rows.
    perl -pi -e 's/\(int64_t\(1\) << 30\)/(emu::grid_x_limit)/g' "$out/inc/hadamard/hadamard_launch.cu"
    grep -q 'emu::grid_x_limit' "$out/inc/hadamard/hadamard_launch.cu"
    printf '#include "hadamard/hadamard_launch.cu"\n' > "$out/hadamard_kernels.cpp"
    cached_object "$twins/hadamard_cpu.o" "$repo/csrc/hadamard/hadamard_cpu.cpp" "$repo/csrc/hadamard/hadamard_cpu_impl.h" \
      "$repo/csrc/hadamard/params.h"
    link_driver "${ptx_cxx[@]}" -O1 -g1 "${san[@]}" -- "$out/hadamard_kernels.cpp" "$here/hadamard.cpp" \
      "$twins/hadamard_cpu.o" ;;
  # The emulator's own ordering, no op: which accesses it lets TSan see as races (races.cpp).
  races)
    "${CXX:-g++}" -std=c++20 -I"$here" -I"$repo/csrc" -O1 -g1 -pthread "${san[@]}" "$here/races.cpp" -o "$out/$op" ;;
  *) echo "run.sh: unknown op '$op' (fft, fftconv, butterfly, attention, block_diag_matmul, fused_add_norm, hadamard, races)" >&2; exit 2 ;;
esac
exec "$out/$op" "$@"
