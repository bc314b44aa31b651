// The FFT building blocks of csrc/core/fft.cuh on the GPU against their CPU twins in
// csrc/core/fft_cpu.h (fp64), so that a bug in a block shows up here by name, not only as a wrong
// mmm.fft output (or a wrong FFT convolution in a kernel built on them). Torch-free; built and
// run by tests/test_fft.py::test_fft_blocks_cuda (nvcc + a GPU).
//   cta_fft, cta_fft_dif (bit-reversed out), cta_fft_dit (bit-reversed in), cta_rfft_post,
//   cta_irfft_pre: forward and inverse, plain and swizzled layouts, blockDim 32 .. 512,
//   n = 1 .. the largest that fits the device's shared memory.
#include <cmath>
#include <complex>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/fft.cuh"
#include "core/fft_cpu.h"
#include "harness.cuh"

using C = std::complex<double>;
enum Mode { kFft = 0, kDif, kDit, kRfft, kIrfft };
const char* kNames[] = {"cta_fft", "cta_fft_dif", "cta_fft_dit", "cta_rfft_post", "cta_irfft_pre"};

// Each block transforms its own row of n + 1 float2 (slot n only for the real helpers).
template <int kMode, bool kInverse, bool kSwizzle>
__global__ void __launch_bounds__(512) blocks_kernel(float2* g, int log2n) {
  extern __shared__ float2 sm[];
  const int n = 1 << log2n;
  float2* row = g + size_t(blockIdx.x) * (n + 1);
  for (int i = threadIdx.x; i < n; i += blockDim.x) sm[mmm::fft::swz<kSwizzle>(i, log2n)] = row[i];
  if (threadIdx.x == 0) sm[n] = row[n];
  if constexpr (kMode == kFft) mmm::fft::cta_fft<kInverse, kSwizzle>(sm, log2n);
  if constexpr (kMode == kDif) mmm::fft::cta_fft_dif<kInverse, kSwizzle>(sm, log2n);
  if constexpr (kMode == kDit) mmm::fft::cta_fft_dit<kInverse, kSwizzle>(sm, log2n);
  if constexpr (kMode == kRfft) mmm::fft::cta_rfft_post<kSwizzle>(sm, log2n);
  if constexpr (kMode == kIrfft) mmm::fft::cta_irfft_pre<kSwizzle>(sm, log2n);
  for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = sm[mmm::fft::swz<kSwizzle>(i, log2n)];
  if (threadIdx.x == 0) row[n] = sm[n];
}

template <int kMode, bool kInverse, bool kSwizzle>
double run_case(int log2n, int threads, int rows, std::mt19937& gen) {
  const int n = 1 << log2n;
  std::normal_distribution<double> nd;
  std::vector<C> x(size_t(rows) * (n + 1));
  for (auto& v : x) v = C(nd(gen), nd(gen));
  std::vector<float2> h(x.size());
  std::vector<C> want(x.size());
  for (int r = 0; r < rows; ++r) {
    C* in = x.data() + size_t(r) * (n + 1);
    C* w = want.data() + size_t(r) * (n + 1);
    std::vector<C> src(in, in + n + 1);
    for (int i = 0; i <= n; ++i) w[i] = src[i];
    switch (kMode) {
      case kFft: mmm::fft_cpu::fft_inplace(w, log2n, kInverse); break;
      case kDif:
        mmm::fft_cpu::fft_inplace(w, log2n, kInverse);
        mmm::fft_cpu::bit_reverse_permute(w, log2n);
        break;
      case kDit:
        mmm::fft_cpu::fft_inplace(w, log2n, kInverse);
        mmm::fft_cpu::bit_reverse_permute(in, log2n);  // the kernel gets bit-reversed input
        break;
      case kRfft: mmm::fft_cpu::rfft_post(w, log2n); break;
      case kIrfft: mmm::fft_cpu::irfft_pre(w, log2n); break;
    }
  }
  for (size_t i = 0; i < x.size(); ++i) h[i] = make_float2(float(x[i].real()), float(x[i].imag()));
  float2* d = nullptr;
  CUDA_OK(cudaMalloc(&d, h.size() * sizeof(float2)));
  CUDA_OK(cudaMemcpy(d, h.data(), h.size() * sizeof(float2), cudaMemcpyHostToDevice));
  const size_t smem = size_t(n + 1) * sizeof(float2);
  auto kernel = blocks_kernel<kMode, kInverse, kSwizzle>;
  CUDA_OK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<rows, threads, smem>>>(d, log2n);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaMemcpy(h.data(), d, h.size() * sizeof(float2), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaFree(d));
  const int count = kMode == kRfft ? n + 1 : n;
  double num = 0, den = 0;
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < count; ++i) {
      const size_t k = size_t(r) * (n + 1) + i;
      num += std::norm(C(h[k].x, h[k].y) - want[k]);
      den += std::norm(want[k]);
    }
  return std::sqrt(num / (den > 0 ? den : 1));
}

template <int kMode>
void run_mode(int max_log2, std::mt19937& gen) {
  double worst = 0;
  int failed = 0;
  for (int log2n = 0; log2n <= max_log2; ++log2n)
    for (int threads : {32, 96, 256, 512}) {
      const int rows = 3;
      const double e[4] = {run_case<kMode, false, false>(log2n, threads, rows, gen),
                           run_case<kMode, true, false>(log2n, threads, rows, gen),
                           run_case<kMode, false, true>(log2n, threads, rows, gen),
                           run_case<kMode, true, true>(log2n, threads, rows, gen)};
      const double tol = 3e-7 * (log2n + 2);
      for (double v : e) {
        worst = std::max(worst, v);
        if (!(v <= tol)) {
          ++failed;
          std::printf("  %s n=%d threads=%d: relative error %.2e %.2e %.2e %.2e (fwd, inv, swizzled fwd, inv) > %.1e\n",
                      kNames[kMode], 1 << log2n, threads, e[0], e[1], e[2], e[3], tol);
          break;
        }
      }
    }
  std::printf("%s %s: n = 1 .. %d, worst relative error %.2e\n", failed ? "FAIL" : "PASS", kNames[kMode], 1 << max_log2,
              worst);
  (failed ? g_failed : g_passed) += 1;
}

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device\n");
    return 2;
  }
  int optin = 0;
  CUDA_OK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  int max_log2 = 0;
  while (max_log2 < 14 && size_t((1 << (max_log2 + 1)) + 1) * sizeof(float2) <= size_t(optin)) ++max_log2;
  std::mt19937 gen(11);
  run_mode<kFft>(max_log2, gen);
  run_mode<kDif>(max_log2, gen);
  run_mode<kDit>(max_log2, gen);
  run_mode<kRfft>(max_log2, gen);
  run_mode<kIrfft>(max_log2, gen);
  CUDA_OK(cudaDeviceSynchronize());
  return summary();
}
