// fftconv on the CPU: fftconv_cpu_impl.h (the CUDA kernels' algorithm on a vector of channels at
// a time), compiled per instruction set and picked at run time (core/cpu_variants.h). Arithmetic
// in fp32 (fp64 for fp64 inputs, so gradcheck sees a float64 function). The forward is parallel
// over (batch row, channel group) tasks; the backward over fixed (channel group, batch chunk)
// tasks whose dk / dbias partials are summed in chunk order, so the result does not depend on the
// thread count.
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/fft_cpu.h"
#include "core/numeric.h"
#include "fftconv/params.h"

namespace mmm {
namespace {

int64_t bwd_chunks(const FFTConvBwdParams& p) {
  if (p.batch == 0) return 0;
  // Enough tasks for a many-core machine even when channels are few; fixed by the shapes only.
  return std::min<int64_t>(p.batch, std::max<int64_t>(1, ceil_div(64, fftconv_cpu_groups(p))));
}

size_t real_bytes(const FFTConvParams& p) { return p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float); }

}  // namespace
}  // namespace mmm

#define MMM_CPU_IMPL "fftconv/fftconv_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

size_t fftconv_cpu_kspec_bytes(const FFTConvParams& p) {
  return size_t(fftconv_cpu_groups(p) * kFftconvCpuChannels * (p.half() + 1) * 2) * real_bytes(p);
}

void fftconv_kspec_cpu(const FFTConvParams& p, void* kspec, int64_t g_begin, int64_t g_end) {
  MMM_CPU_VARIANT(kspec_cpu, p, kspec, g_begin, g_end);
}

void fftconv_fwd_cpu(const FFTConvParams& p, const void* kspec, int64_t task_begin, int64_t task_end) {
  MMM_CPU_VARIANT(fwd_cpu, p, kspec, task_begin, task_end);
}

int64_t fftconv_bwd_cpu_tasks(const FFTConvBwdParams& p) { return fftconv_cpu_groups(p) * bwd_chunks(p); }

size_t fftconv_bwd_cpu_workspace_bytes(const FFTConvBwdParams& p) {
  const size_t channel_slots = size_t(fftconv_bwd_cpu_tasks(p) * kFftconvCpuChannels);
  return ((p.dk ? channel_slots * size_t(p.half() + 1) * 2 : 0) + (p.dbias ? channel_slots : 0)) * real_bytes(p);
}

void fftconv_bwd_cpu_task(const FFTConvBwdParams& p, const void* kspec, void* ws, int64_t task) {
  MMM_CPU_VARIANT(bwd_cpu_task, p, kspec, ws, task);
}

void fftconv_bwd_cpu_finalize(const FFTConvBwdParams& p, void* ws, int64_t g_begin, int64_t g_end) {
  MMM_CPU_VARIANT(bwd_cpu_finalize, p, ws, g_begin, g_end);
}

}  // namespace mmm
