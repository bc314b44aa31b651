// Runs the fftconv CUDA kernels (csrc/fftconv/fftconv_kernel.cuh, on core/fft.cuh) on CPU threads
// (tests/emulate/cuda_on_cpu.h: one fiber per CUDA thread, barriers for __syncthreads, warp
// exchanges for __shfl_xor_sync, blocks one after another). Checks y and every gradient against a
// direct O(N^2) convolution in double, through every path the launcher can pick: shared memory,
// one buffer in global scratch, both in scratch, and rows split over clusters of two CTAs
// (fftconv_{fwd,bwd}_split_kernel: the cluster barrier and the distributed-shared-memory loads
// modelled by ptx_on_cpu.h), with small grids so that every grid-stride loop and scratch slot is reused,
// and enough channels that a backward chunk accumulates several rows.
// It sees index math, pairing, scaling and the order of barriers; races under ThreadSanitizer,
// bank conflicts and coalescing with the memory counts (run.sh).
//   tests/emulate/run.sh fftconv [max_N [min_N]]
// (tests/test_fftconv.py::test_cuda_kernels_on_cpu_threads runs it when MMM_EMULATE=1).
#include <cstdlib>
#include <random>

#include "ptx_on_cpu.h"
#include "fftconv/fftconv_kernel.cuh"

using Vec = std::vector<float>;

static double rel_err(const Vec& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

// path: 0 = everything in shared memory (the backward's dk sums too), 1 = backward's second buffer
// in scratch, 2 = all scratch, 3 = rows split over clusters of two CTAs, forward and backward (two
// clusters: rows and tasks loop), 4 = as 0 with the dk sums in global memory (where they do not fit)
// and the forward on half the threads (fftconv_launch's fwd_threads cap: 2 items a thread).
// Memory counts of the scratch paths (1, 2), whose FFT passes run on global memory, kept apart: the
// shared-memory path (0) runs every kernel with the judged layout.
static emu::AccessStats scratch_counts;

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
  const int64_t chunks = mmm::fftconv_bwd_chunks(p);
  const int slots = 2;  // scratch paths: two CTAs, so loops wrap
  std::vector<float2> kspec(size_t(H * (n + 1))), dk_part(size_t(H * chunks * (n + 1))), scratch(size_t(slots * 2 * n));
  Vec dbias_part(size_t(H * chunks));
  const bool split = path == 3, s1 = path != 2, s2 = path == 0 || split || path == 4;
  emu::access_stats = path == 1 || path == 2 ? &scratch_counts : &emu::all_accesses;
  const int g_ch = s1 ? int(H) : slots, g_rows = s1 ? int(R) : slots;
  if (s1) launch_grid(g_ch, threads, n * sizeof(float2), [&] { mmm::fftconv_kspec_kernel<true>(p, kspec.data(), nullptr); });
  else launch_grid(g_ch, threads, 0, [&] { mmm::fftconv_kspec_kernel<false>(p, kspec.data(), scratch.data()); });
  // Split kernels: half the launcher's threads (at least a warp), so that the loops take 2 items a
  // thread, as at N = 16384 on a GPU, where the forward's 256 threads are below FFTConvTile::threads.
  const int split_threads = std::max(32, mmm::FFTConvTile::threads(n / 2) / 2);
  if (split)
    launch_grid(4, std::min(split_threads, mmm::FFTConvTile::kSplitThreads), n / 2 * sizeof(float2),
                [&] { mmm::fftconv_fwd_split_kernel<float>(p, kspec.data()); }, 2);
  else if (s1)
    launch_grid(g_rows, path == 4 ? std::max(32, threads / 2) : threads, n * sizeof(float2),
                [&] { mmm::fftconv_fwd_kernel<float, true>(p, kspec.data(), nullptr); });
  else launch_grid(g_rows, threads, 0, [&] { mmm::fftconv_fwd_kernel<float, false>(p, kspec.data(), scratch.data()); });
  const int tasks = int(H * chunks);
  if (split)  // A and B halves, then this CTA's dk sums (n/2 + 1 float2)
    launch_grid(4, split_threads, (n + n / 2 + 1) * sizeof(float2), [&] {
      mmm::fftconv_bwd_split_kernel<float>(p, kspec.data(), dk_part.data(), dbias_part.data());
    }, 2);
  else if (s2) {
    const bool acc_smem = path == 0;
    launch_grid(tasks, threads, (2 * n + (acc_smem ? n + 1 : 0)) * sizeof(float2), [&] {
      mmm::fftconv_bwd_kernel<float, true, true>(p, kspec.data(), dk_part.data(), dbias_part.data(), nullptr,
                                                 acc_smem);
    });
  } else if (s1)
    launch_grid(slots, threads, n * sizeof(float2), [&] {
      mmm::fftconv_bwd_kernel<float, true, false>(p, kspec.data(), dk_part.data(), dbias_part.data(), scratch.data(),
                                                  false);
    });
  else
    launch_grid(slots, threads, 0, [&] {
      mmm::fftconv_bwd_kernel<float, false, false>(p, kspec.data(), dk_part.data(), dbias_part.data(), scratch.data(),
                                                   false);
    });
  if (s1)
    launch_grid(g_ch, threads, n * sizeof(float2), [&] {
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
    for (int path = 0; path < 5; ++path) {
      if (path == 3 && N < 33) continue;  // a split row: n >= 64 (fftconv_launch splits only long ones)
      ok &= run_case(3, 2, N, true, true, path, gen);
      if (path == 0 || path == 3) ok &= run_case(2, 1, N, false, false, path, gen);
    }
  }
  // Enough channels that a backward chunk holds several rows (fftconv_bwd_chunks: the 6 rows of
  // a channel in 4 chunks): the dk partial sums then accumulate across rows.
  if (min_n <= 17 && max_n >= 17)
    for (int path : {0, 2, 4}) ok &= run_case(6, 300, 17, true, true, path, gen);
  // The split backward with several rows per task (dk's partial sums over rows in one CTA pair)
  // and a dbias sum over several rows: 1024 channels, so each task is a channel's 2 rows.
  if (min_n <= 50 && max_n >= 50) ok &= run_case(2, 1024, 50, true, true, 3, gen);
  if (emu::counting_accesses)
    emu::report_accesses(stdout, "the scratch paths (the FFT in global memory: uncoalesced by design, not judged)",
                         scratch_counts);
  std::printf(ok ? "all cases passed\n" : "FAILED\n");
  return ok ? 0 : 1;
}
