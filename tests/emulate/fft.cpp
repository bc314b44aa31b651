// Runs the device code of csrc/core/fft.cuh and the op kernels of csrc/fft/fft_kernel.cuh on CPU
// threads (tests/emulate/cuda_on_cpu.h: one fiber per CUDA thread, barriers for
// __syncthreads, warp exchanges for __shfl_xor_sync) and checks them against csrc/core/fft_cpu.h.
// It exercises the index math, the pass schedule, the twiddles and the swizzle of the CUDA code
// without a GPU (races only under ThreadSanitizer, run.sh; never bank conflicts).
//   tests/emulate/run.sh fft [max_log2 [min_log2 [op_max_log2 [op_cta_log2]]]]
// (tests/test_fft.py::test_cuda_code_on_cpu_threads runs it when MMM_EMULATE=1).
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdlib>
#include <random>

#include "cuda_on_cpu.h"
#include "core/fft.cuh"
#include "core/fft_cpu.h"
#include "fft/fft_kernel.cuh"

using C = std::complex<double>;

static double rel_err(const std::vector<float2>& got, const std::vector<C>& want, int count) {
  double num = 0, den = 0;
  for (int i = 0; i < count; ++i) {
    num += std::norm(C(got[i].x, got[i].y) - want[i]);
    den += std::norm(want[i]);
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

// kDifLoad / kDitStore: cta_fft_dif_load reading the input from an array outside shared memory
// (which starts as NaN), cta_fft_dit_store writing the output to one.
enum class Mode { kFft, kDif, kDit, kRfft, kIrfft, kDifLoad, kDitStore };
static emu::AccessStats unswizzled_counts;

// One case: n = 2^log2n, blockDim threads; returns the relative error against fft_cpu (fp64).
template <bool kInverse, bool kSwizzle>
double run_case(Mode mode, int log2n, int threads, std::mt19937& gen) {
  const int n = 1 << log2n;
  std::normal_distribution<double> nd;
  std::vector<C> x(size_t(n) + 1);
  for (auto& v : x) v = C(nd(gen), nd(gen));
  std::vector<float2> smem(size_t(n) + 1);
  std::vector<C> want = x;
  // What the kernel gets in smem[swz(i)] (element i) and what it should leave there.
  std::vector<C> in = x;
  switch (mode) {
    case Mode::kFft: mmm::fft_cpu::fft_inplace(want.data(), log2n, kInverse); break;
    case Mode::kDif:
    case Mode::kDifLoad:
      mmm::fft_cpu::fft_inplace(want.data(), log2n, kInverse);
      mmm::fft_cpu::bit_reverse_permute(want.data(), log2n);
      break;
    case Mode::kDit:
    case Mode::kDitStore:
      mmm::fft_cpu::bit_reverse_permute(in.data(), log2n);  // bit-reversed input
      mmm::fft_cpu::fft_inplace(want.data(), log2n, kInverse);
      break;
    case Mode::kRfft:
      mmm::fft_cpu::rfft_post(want.data(), log2n);  // want[0..n]
      break;
    case Mode::kIrfft: mmm::fft_cpu::irfft_pre(want.data(), log2n); break;
  }
  for (int i = 0; i < n; ++i) smem[size_t(mmm::fft::swz<kSwizzle>(i, log2n))] = {float(in[i].real()), float(in[i].imag())};
  smem[size_t(n)] = {float(in[n].real()), float(in[n].imag())};
  std::vector<float2> ext(size_t(n), {NAN, NAN});  // kDifLoad's input, kDitStore's output
  if (mode == Mode::kDifLoad) {
    for (int i = 0; i < n; ++i) ext[size_t(i)] = smem[size_t(mmm::fft::swz<kSwizzle>(i, log2n))];
    std::fill(smem.begin(), smem.begin() + n, float2{NAN, NAN});
  }
  const auto ext_load = [&](int base, int s, auto& v) {
    constexpr int kN = sizeof(v) / sizeof(v[0]);
    for (int m = 0; m < kN; ++m) v[m] = ext[size_t(base + m * s)];
  };
  const auto ext_store = [&](int base, int s, const auto& v) {
    constexpr int kN = sizeof(v) / sizeof(v[0]);
    for (int m = 0; m < kN; ++m) ext[size_t(base + m * s)] = v[m];
  };
  float2* data = smem.data();
  // Bank conflicts: the swizzled layout must have none; the natural one (kSwizzle = false, what
  // callers without the swizzle get) has them in the bit reversal, counted apart.
  emu::driver_shared = {data, smem.size() * sizeof(float2)};
  if (!kSwizzle) emu::access_stats = &unswizzled_counts;
  launch_grid(1, threads, 0, [&] {
    switch (mode) {
      case Mode::kFft: mmm::fft::cta_fft<kInverse, kSwizzle>(data, log2n); break;
      case Mode::kDif: mmm::fft::cta_fft_dif<kInverse, kSwizzle>(data, log2n); break;
      case Mode::kDit: mmm::fft::cta_fft_dit<kInverse, kSwizzle>(data, log2n); break;
      case Mode::kRfft: mmm::fft::cta_rfft_post<kSwizzle>(data, log2n); break;
      case Mode::kIrfft: mmm::fft::cta_irfft_pre<kSwizzle>(data, log2n); break;
      case Mode::kDifLoad: mmm::fft::cta_fft_dif_load<kInverse, kSwizzle>(data, log2n, ext_load); break;
      case Mode::kDitStore: mmm::fft::cta_fft_dit_store<kInverse, kSwizzle>(data, log2n, ext_store); break;
    }
  });
  emu::driver_shared = {nullptr, 0};
  emu::access_stats = &emu::all_accesses;
  std::vector<float2> got(size_t(n) + 1);
  for (int i = 0; i < n; ++i) got[i] = mode == Mode::kDitStore ? ext[size_t(i)] : smem[size_t(mmm::fft::swz<kSwizzle>(i, log2n))];
  got[n] = smem[n];
  const int count = mode == Mode::kRfft ? n + 1 : n;
  return rel_err(got, want, count);
}

// ---- The op kernels (csrc/fft/fft_kernel.cuh) on a small grid, mirroring fft_launch.cu's paths
// with a configurable CTA limit so the four-step path runs at small n; `split`: a row the CTA
// limit admits goes to two CTAs (fft_launch.cu's split_row; not rfft).
template <mmm::FftKind kKind, bool kInverse>
void emu_run(int log2n, int64_t rows, const float2* x, int64_t xs, float2* y, int64_t ys, float2* ws, int lmax,
             float scale, bool split = false) {
  using mmm::FftKind;
  using mmm::FftTile;
  constexpr bool kPost = kKind == FftKind::kR2C;
  const int grid = 2;  // small, so every grid-stride loop wraps
  if (log2n <= mmm::fft::kWarpLog2) {
    launch_grid(grid, FftTile::kWarpKernelWarps * 32, 0,
                [&] { mmm::fft_warp_kernel<kKind, kInverse>(x, xs, y, ys, rows, log2n, scale); });
    return;
  }
  auto cta_threads = [](int l) { return std::min(std::max((1 << l) / FftTile::kPointsPerThread, 32), FftTile::kMaxThreads); };
  if constexpr (!kPost) {
    if (split && log2n <= lmax) {
      launch_grid(grid, cta_threads(log2n - 1), sizeof(float2) << (log2n - 1), [&] {
        mmm::fft_cta_kernel<kKind, kInverse, false, true>(x, xs, y, ys, rows * 2, 2, log2n - 1, scale);
      });
      return;
    }
  }
  if (log2n <= lmax) {
    launch_grid(grid, cta_threads(log2n), sizeof(float2) << log2n,
                [&] { mmm::fft_cta_kernel<kKind, kInverse, kPost>(x, xs, y, ys, rows, 1, log2n, scale); });
    return;
  }
  const int log2a = log2n - lmax, a = 1 << log2a;
  launch_grid(grid, FftTile::kColumnThreads, 0, [&] {
    switch (log2a) {
      case 1: mmm::fft_column_kernel<1, kKind, kInverse>(x, xs, ws, rows, log2n); break;
      case 2: mmm::fft_column_kernel<2, kKind, kInverse>(x, xs, ws, rows, log2n); break;
      case 3: mmm::fft_column_kernel<3, kKind, kInverse>(x, xs, ws, rows, log2n); break;
      default: mmm::fft_column_kernel<4, kKind, kInverse>(x, xs, ws, rows, log2n); break;
    }
  });
  launch_grid(grid, cta_threads(lmax), sizeof(float2) << lmax, [&] {
    mmm::fft_cta_kernel<FftKind::kC2C, kInverse, false>(ws, int64_t(1) << lmax, y, ys, rows * a, a, lmax,
                                                        kPost ? 1.f : scale);
  });
  if (kPost) launch_grid(grid, 256, 0, [&] { mmm::rfft_post_kernel(y, ys, rows, log2n, scale); });
}

// One op case against fft_cpu in double; returns the relative error.
template <mmm::FftKind kKind, bool kInverse>
double op_case(int log2n, int64_t rows, int lmax, std::mt19937& gen, bool split = false) {
  using mmm::FftKind;
  std::normal_distribution<double> nd;
  const int64_t n = int64_t(1) << log2n;
  const float scale = 0.75f;
  // Input rows with padding between them (a row stride > the row length).
  const int64_t in_len = kKind == FftKind::kC2R ? n + 1 : n;      // float2 per row
  const int64_t out_len = kKind == FftKind::kR2C ? n + 1 : n;     // float2 per row
  const int64_t xs = in_len + 3, ys = out_len;
  std::vector<float2> x(size_t(rows * xs)), y(size_t(rows * ys), {-7.f, -7.f}), ws(size_t(rows * n));
  for (auto& v : x) v = {float(nd(gen)), float(nd(gen))};
  emu_run<kKind, kInverse>(log2n, rows, x.data(), xs, y.data(), ys, ws.data(), lmax, scale, split);
  double num = 0, den = 0;
  std::vector<C> ref(size_t(n) + 1);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < in_len; ++j) ref[j] = C(x[r * xs + j].x, x[r * xs + j].y);
    if (kKind == FftKind::kC2C) {
      mmm::fft_cpu::fft_inplace(ref.data(), log2n, kInverse);
    } else if (kKind == FftKind::kR2C) {
      mmm::fft_cpu::fft_inplace(ref.data(), log2n, false);
      mmm::fft_cpu::rfft_post(ref.data(), log2n);
    } else {
      mmm::fft_cpu::irfft_pre(ref.data(), log2n);
      mmm::fft_cpu::fft_inplace(ref.data(), log2n, true);
    }
    for (int64_t k = 0; k < out_len; ++k) {
      const C got(y[r * ys + k].x, y[r * ys + k].y);
      num += std::norm(got - double(scale) * ref[k]);
      den += std::norm(double(scale) * ref[k]);
    }
  }
  return std::sqrt(num / den);
}

int op_tests(int max_log2, int lmax, std::mt19937& gen, double& worst) {
  using mmm::FftKind;
  int failures = 0;
  for (int log2n = 0; log2n <= max_log2; ++log2n) {
    const int64_t rows = log2n <= 2 ? 1100 : 3;  // short rows: several 512-point warp tiles
    const double e[4] = {op_case<FftKind::kC2C, false>(log2n, rows, lmax, gen), op_case<FftKind::kC2C, true>(log2n, rows, lmax, gen),
                         op_case<FftKind::kR2C, false>(log2n, rows, lmax, gen), op_case<FftKind::kC2R, true>(log2n, rows, lmax, gen)};
    const double tol = 3e-7 * (log2n + 2);
    for (double v : e) worst = std::max(worst, v);
    if (!(e[0] <= tol && e[1] <= tol && e[2] <= tol && e[3] <= tol)) {
      ++failures;
      std::printf("FAIL op kernels n=%d (cta limit 2^%d): fft %.2e ifft %.2e rfft %.2e irfft %.2e > %.1e\n", 1 << log2n,
                  lmax, e[0], e[1], e[2], e[3], tol);
    }
  }
  // Rows split over two CTAs, from the shortest whose half still takes the CTA kernel (an odd row
  // count: the grid of 2 strides over 2 x 5 sub-rows).
  for (int log2n = mmm::fft::kWarpLog2 + 2; log2n <= std::max(max_log2, mmm::fft::kWarpLog2 + 2); ++log2n) {
    const double e[3] = {op_case<FftKind::kC2C, false>(log2n, 5, log2n, gen, true),
                         op_case<FftKind::kC2C, true>(log2n, 5, log2n, gen, true),
                         op_case<FftKind::kC2R, true>(log2n, 5, log2n, gen, true)};
    const double tol = 3e-7 * (log2n + 2);
    for (double v : e) worst = std::max(worst, v);
    if (!(e[0] <= tol && e[1] <= tol && e[2] <= tol)) {
      ++failures;
      std::printf("FAIL op kernels n=%d split over two CTAs: fft %.2e ifft %.2e irfft %.2e > %.1e\n", 1 << log2n, e[0],
                  e[1], e[2], tol);
    }
  }
  return failures;
}

int main(int argc, char** argv) {
  const int max_log2 = argc > 1 ? std::atoi(argv[1]) : 13;
  const int min_log2 = argc > 2 ? std::atoi(argv[2]) : 0;
  // Op kernels up to 2^op_max, with the one-CTA limit at 2^op_lmax (four-step beyond).
  const int op_max = argc > 3 ? std::atoi(argv[3]) : 12, op_lmax = argc > 4 ? std::atoi(argv[4]) : 10;
  std::mt19937 gen(7);
  double worst = 0;
  int failures = 0;
  const char* names[] = {"fft", "dif", "dit", "rfft_post", "irfft_pre", "dif_load", "dit_store"};
  for (int log2n = min_log2; log2n <= max_log2; ++log2n) {
    for (int threads : {32, 96, 256}) {
      if (threads == 96 && log2n % 3) continue;  // an odd warp count, on some sizes
      for (int m = 0; m < 7; ++m) {
        const Mode mode = Mode(m);
        double e[4] = {run_case<false, false>(mode, log2n, threads, gen), run_case<true, false>(mode, log2n, threads, gen),
                       run_case<false, true>(mode, log2n, threads, gen), run_case<true, true>(mode, log2n, threads, gen)};
        // fp32 twiddles and arithmetic: the error grows like sqrt(log2 n) * 2^-24.
        const double tol = 3e-7 * (log2n + 2);
        for (double v : e) {
          worst = std::max(worst, v);
          if (!(v <= tol)) {
            ++failures;
            std::printf("FAIL %s n=%d threads=%d: relative error %.3e > %.1e (fwd, inv, swz fwd, swz inv = "
                        "%.2e %.2e %.2e %.2e)\n", names[m], 1 << log2n, threads, v, tol, e[0], e[1], e[2], e[3]);
            break;
          }
        }
      }
    }
  }
  if (op_max >= 0) failures += op_tests(op_max, op_lmax, gen, worst);
  // The bank count's own check: the natural layout's bit reversal conflicts from n = 64 on (the
  // swizzled layout's count is judged with every other kernel's at exit).
  if (emu::counting_accesses && max_log2 >= 6) {
    emu::report_accesses(stdout, "core/fft.cuh without the swizzle (conflicts expected)", unswizzled_counts);
    if (unswizzled_counts.shared.excess() == 0) {
      ++failures;
      std::printf("FAIL: the unswizzled layout shows no bank conflicts: the count does not see them\n");
    }
  }
  std::printf("%s: worst relative error %.3e (core blocks: n = 2^%d .. 2^%d; op kernels: n up to 2^%d, one CTA up to "
              "2^%d)\n", failures ? "FAILED" : "ok", worst, min_log2, max_log2, op_max, op_lmax);
  return failures ? 1 : 0;
}
