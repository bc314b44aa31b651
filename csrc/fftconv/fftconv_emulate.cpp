// Runs the fftconv CUDA kernels (fftconv_kernel.cuh, on core/fft.cuh) on the CPU: one std::thread
// per CUDA thread, __syncthreads as a barrier over the block, __shfl_xor_sync as an exchange
// through a warp barrier, blocks one after another (the emulation of csrc/fft/fft_emulate.cpp on
// the fft branch). Checks y and every gradient against a direct O(N^2) convolution in double,
// through every path the launcher can pick: shared memory, one buffer in global scratch, both
// in scratch, with small grids so that every grid-stride loop and scratch slot is reused. It
// sees index math, pairing, scaling and the order of barriers; not races or bank conflicts.
// Not part of the library build:
//   g++ -std=c++20 -O1 -pthread -Icsrc csrc/fftconv/fftconv_emulate.cpp -o /tmp/fftconv_emulate
//   /tmp/fftconv_emulate [max_N [min_N]]
// (tests/test_fftconv.py::test_cuda_kernels_on_cpu_threads, opt-in with MMM_FFT_EMULATE=1).
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "core/numeric.h"

#define MMM_FFT_HOST_EMULATION
#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
#define __shared__ static  // one block runs at a time: a static is the block's shared memory

struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
struct Dim3 {
  unsigned x = 0;
};
thread_local Dim3 threadIdx;
Dim3 blockDim, blockIdx, gridDim;

namespace emu {
std::unique_ptr<std::barrier<>> block_barrier;
std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
std::vector<float> exchange;
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
std::vector<float2> emu_smem;
inline float2* emu_dynamic_smem() { return emu_smem.data(); }
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const unsigned t = threadIdx.x, w = t / 32;
  emu::exchange[t] = v;
  emu::warp_barriers[w]->arrive_and_wait();
  const float r = emu::exchange[(t & ~31u) | ((t & 31u) ^ unsigned(mask))];
  emu::warp_barriers[w]->arrive_and_wait();
  return r;
}
inline void sincospif(float x, float* s, float* c) {
  const long double a = 3.141592653589793238462643383279502884L * x;
  *s = float(std::sin(a));
  *c = float(std::cos(a));
}
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int b = 0; b < 32; ++b) r |= ((v >> b) & 1u) << (31 - b);
  return r;
}
// The storage types and conversions of core/cuda_utils.cuh, on the CPU twins' bit-exact ones.
struct __half { mmm::Half h; };
struct __nv_bfloat16 { mmm::BFloat16 h; };
inline float __half2float(__half v) { return mmm::to_float(v.h); }
inline float __bfloat162float(__nv_bfloat16 v) { return mmm::to_float(v.h); }
inline __half __float2half_rn(float f) { return {mmm::from_float<mmm::Half>(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {mmm::from_float<mmm::BFloat16>(f)}; }
namespace mmm {
inline float to_f(float v) { return v; }
template <typename U> inline U from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
inline float warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
}  // namespace mmm

#include "fftconv/fftconv_kernel.cuh"

template <class Body>
void launch_grid(int grid, int threads, size_t smem_float2, Body body) {
  gridDim.x = unsigned(grid);
  emu_smem.assign(smem_float2, {0.f, 0.f});
  blockDim.x = unsigned(threads);
  for (int b = 0; b < grid; ++b) {
    blockIdx.x = unsigned(b);
    emu::block_barrier = std::make_unique<std::barrier<>>(threads);
    emu::warp_barriers.clear();
    for (int w = 0; w < threads / 32; ++w) emu::warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    emu::exchange.assign(size_t(threads), 0.f);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([t, &body] {
        threadIdx.x = unsigned(t);
        body();
      });
    for (auto& th : pool) th.join();
  }
}

using Vec = std::vector<float>;

static double rel_err(const Vec& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

// path: 0 = everything in shared memory, 1 = backward's second buffer in scratch, 2 = all scratch.
static bool run_case(int64_t B, int64_t H, int64_t N, bool gates, bool bias_on, int path, std::mt19937& gen) {
  std::normal_distribution<float> nd;
  auto rnd = [&](int64_t n) { Vec v(static_cast<size_t>(n)); for (auto& x : v) x = nd(gen); return v; };
  const int64_t R = B * H;
  Vec u = rnd(R * N), k = rnd(H * N), bias = rnd(H), pre = rnd(R * N), post = rnd(R * N), dy = rnd(R * N);
  for (auto& x : k) x /= std::sqrt(float(N));
  mmm::FFTConvBwdParams p;
  p.batch = B; p.channels = H; p.n = N;
  p.log2_fft = 1;
  while ((int64_t(1) << p.log2_fft) < 2 * N) ++p.log2_fft;
  p.u = u.data(); p.u_rs = N;
  if (gates) { p.pregate = pre.data(); p.pre_rs = N; p.postgate = post.data(); p.post_rs = N; }
  p.k = k.data(); p.k_rs = N;
  if (bias_on) p.bias = bias.data();
  Vec y(R * N), du(R * N), dpre(R * N), dpost(R * N), dk(H * N), dbias(H);
  p.y = y.data(); p.dy = dy.data(); p.dy_rs = N;
  p.du = du.data(); p.dk = dk.data();
  if (bias_on) p.dbias = dbias.data();
  if (gates) { p.dpregate = dpre.data(); p.dpostgate = dpost.data(); }

  const int log2n = p.log2_fft - 1;
  const int64_t n = int64_t(1) << log2n;
  const int threads = mmm::FFTConvTile::threads(n);
  const int64_t chunks = mmm::fftconv_bwd_chunks(B, H);
  const int slots = 2;  // scratch paths: two CTAs, so loops wrap
  std::vector<float2> kspec(size_t(H * (n + 1))), dk_part(size_t(H * chunks * (n + 1))), scratch(size_t(slots * 2 * n));
  Vec dbias_part(size_t(H * chunks));
  const bool s1 = path < 2, s2 = path == 0;
  const int g_ch = s1 ? int(H) : slots, g_rows = s1 ? int(R) : slots;
  if (s1) launch_grid(g_ch, threads, n, [&] { mmm::fftconv_kspec_kernel<true>(p, kspec.data(), nullptr); });
  else launch_grid(g_ch, threads, 0, [&] { mmm::fftconv_kspec_kernel<false>(p, kspec.data(), scratch.data()); });
  if (s1) launch_grid(g_rows, threads, n, [&] { mmm::fftconv_fwd_kernel<float, true>(p, kspec.data(), nullptr); });
  else launch_grid(g_rows, threads, 0, [&] { mmm::fftconv_fwd_kernel<float, false>(p, kspec.data(), scratch.data()); });
  const int tasks = int(H * chunks);
  if (s2)
    launch_grid(tasks, threads, 2 * n, [&] {
      mmm::fftconv_bwd_kernel<float, true, true>(p, kspec.data(), dk_part.data(), dbias_part.data(), nullptr);
    });
  else if (s1)
    launch_grid(slots, threads, n, [&] {
      mmm::fftconv_bwd_kernel<float, true, false>(p, kspec.data(), dk_part.data(), dbias_part.data(), scratch.data());
    });
  else
    launch_grid(slots, threads, 0, [&] {
      mmm::fftconv_bwd_kernel<float, false, false>(p, kspec.data(), dk_part.data(), dbias_part.data(), scratch.data());
    });
  if (s1)
    launch_grid(g_ch, threads, n, [&] {
      mmm::fftconv_bwd_finalize_kernel<true>(p, dk_part.data(), dbias_part.data(), nullptr);
    });
  else
    launch_grid(g_ch, threads, 0, [&] {
      mmm::fftconv_bwd_finalize_kernel<false>(p, dk_part.data(), dbias_part.data(), scratch.data());
    });

  // Direct reference in double.
  std::vector<double> ry(R * N), rdu(R * N), rdpre(R * N), rdpost(R * N), rdk(H * N, 0.0), rdbias(H, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t r = b * H + h, o = r * N;
      const double bs = bias_on ? bias[h] : 0.0;
      auto pg = [&](int64_t t) { return gates ? double(pre[o + t]) : 1.0; };
      auto qg = [&](int64_t t) { return gates ? double(post[o + t]) : 1.0; };
      std::vector<double> v(N), g(N);
      for (int64_t t = 0; t < N; ++t) { v[t] = pg(t) * u[o + t]; g[t] = dy[o + t] * qg(t); }
      for (int64_t t = 0; t < N; ++t) {
        double c = 0, dv = 0;
        for (int64_t s = 0; s <= t; ++s) c += double(k[h * N + t - s]) * v[s];
        for (int64_t s = t; s < N; ++s) dv += g[s] * double(k[h * N + s - t]);
        const double z = c + bs * u[o + t];
        ry[o + t] = qg(t) * z;
        rdpost[o + t] = dy[o + t] * z;
        rdu[o + t] = pg(t) * dv + bs * g[t];
        rdpre[o + t] = u[o + t] * dv;
        rdbias[h] += g[t] * u[o + t];
      }
      for (int64_t j = 0; j < N; ++j)
        for (int64_t t = j; t < N; ++t) rdk[h * N + j] += g[t] * v[t - j];
    }
  struct Item { const char* name; const Vec* got; const std::vector<double>* want; bool on; };
  const Item items[] = {{"y", &y, &ry, true}, {"du", &du, &rdu, true}, {"dk", &dk, &rdk, true},
                        {"dbias", &dbias, &rdbias, bias_on}, {"dpregate", &dpre, &rdpre, gates},
                        {"dpostgate", &dpost, &rdpost, gates}};
  bool ok = true;
  std::printf("B=%lld H=%lld N=%5lld gates=%d bias=%d path=%d threads=%3d:", (long long)B, (long long)H, (long long)N,
              gates, bias_on, path, threads);
  for (const Item& it : items) {
    if (!it.on) continue;
    const double e = rel_err(*it.got, *it.want);
    std::printf(" %s %.1e", it.name, e);
    if (!(e < 2e-5)) ok = false;
  }
  std::printf("%s\n", ok ? "" : "  <-- FAIL");
  return ok;
}

int main(int argc, char** argv) {
  const int64_t max_n = argc > 1 ? std::atoll(argv[1]) : 2000;
  const int64_t min_n = argc > 2 ? std::atoll(argv[2]) : 1;
  std::mt19937 gen(0);
  bool ok = true;
  const int64_t lengths[] = {1, 2, 3, 17, 64, 100, 257, 1000, 2000, 4096};
  for (int64_t N : lengths) {
    if (N > max_n || N < min_n) continue;
    for (int path = 0; path < 3; ++path) {
      ok &= run_case(3, 2, N, true, true, path, gen);
      if (path == 0) ok &= run_case(2, 1, N, false, false, path, gen);
    }
  }
  std::printf(ok ? "all cases passed\n" : "FAILED\n");
  return ok ? 0 : 1;
}
