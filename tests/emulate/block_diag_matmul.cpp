// Runs launch_block_gemm (the tensor-core block GEMM with every staging variant, split-K with its
// reduce kernel, and the fp32 / simt_only FMA kernel) and launch_monarch_fused (the fused
// Monarch forward) - the real launchers and kernels of csrc/block_diag_matmul, compiled for the
// host by tests/emulate/run.sh - on CPU threads (one fiber per CUDA thread; ldmatrix,
// mma.sync and cp.async modelled by ptx_on_cpu.h; ASan/UBSan or TSan) against the CPU twins
// block_gemm_cpu / monarch_fused_cpu, in both cp.async modes.
//   tests/emulate/run.sh block_diag_matmul
// (tests/test_block_diag_matmul.py::test_cuda_kernels_on_cpu_threads runs it when MMM_EMULATE=1).
//
// Cases: block_diag_matmul's forward, dx and dweight descriptors (params.h) and a transposed-A
// one, which between them take all four staging variants (A [m][k] / [k][m] x B [n][k] / [k][n]);
// ragged m, n, k (partial 16-byte chunks zero-filled through src-size, element staging where
// strides are not 16-byte multiples); several blocks; split-K dweight; Monarch's strided stage 2;
// fp32 and simt_only; grids capped below the shape (CTAs striding over tiles and blocks); and
// the fused Monarch forward by rows (l | q) and by blocks (q | l), with several K slices per
// step, forced chunks (J < l) and 16 / 32 tokens per CTA, ragged tokens. Every ldmatrix and every
// cp.async store must be free of shared-memory bank conflicts (the padded pitches and
// padded_tile_chunk's claim; counted by ptx_on_cpu.h). First, on x86-64, every instruction-set
// copy of the block GEMM's CPU twin this machine runs against an fp64 product
// (check_cpu_variants): the tests otherwise run only the copy the machine picks.
//
// Tolerance. Kernel and twin multiply the same 16-bit inputs exactly and accumulate in fp32; only
// the summation order differs (and split-K's partials), so the fp32 results differ by ~1e-6 · M
// (M = Σ |a| |b| of the element, fp64) and their final roundings by one ulp of the type at most:
// |kernel - twin| <= eps · |twin| + 1e-5 · M + 1e-6 (eps 2^-10 fp16, 2^-7 bf16, 0 fp32). The
// fused Monarch rounds its intermediate u to the input type in both implementations, so a
// one-ulp flip of u adds eps · M2 (M2 = Σ |u| |w2|): |kernel - twin| <= eps · (M2 + |twin|) +
// 1e-5 · M2 + 1e-6. "units" = the worst err / (eps/2 · (|twin| [+ M2]) + 2^-22 · M) per case:
// <= 2 in first-order theory (one ulp of the output each way).
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "ptx_on_cpu.h"
#include "typed_buffer.h"
#include "block_diag_matmul/monarch_fused.h"
#include "block_diag_matmul/params.h"

using namespace mmm;

static std::mt19937 rng(11);


struct Cmp {
  double units = 0;
  int64_t bad = 0, nan = 0;
  void add(double got, double ref, double m, double m_round, double eps) {
    if (std::isnan(got)) { ++nan; ++bad; return; }
    const double err = std::fabs(got - ref);
    if (err > eps * (m_round + std::fabs(ref)) + 1e-5 * m + 1e-6) ++bad;
    const double unit = eps / 2 * (m_round + std::fabs(ref)) + 0x1p-22 * m;
    units = std::max(units, unit > 0 ? err / unit : err > 0 ? INFINITY : 0);
  }
};

// Elements of C the descriptor addresses (batch, m, n) -> offset.
static int64_t c_off(const BlockGemm& g, int64_t b, int64_t i, int64_t j) { return b * g.c_bs + i * g.c_ms + j * g.c_ns; }
static int64_t extent(int64_t bs, int64_t s1, int64_t s2, int64_t B, int64_t n1, int64_t n2) {
  return (B - 1) * bs + (n1 - 1) * s1 + (n2 - 1) * s2 + 1;
}

// g's a, b, c strides and sizes set; allocates and fills A, B, runs twin and kernel, compares.
static int run_gemm(BlockGemm g, const char* name, int splits = 1) {
  const DType t = g.dtype;
  Buffer A = random_buffer(rng, t, extent(g.a_bs, g.a_ms, g.a_ks, g.batch, g.m, g.k));
  Buffer B = random_buffer(rng, t, extent(g.b_bs, g.b_ks, g.b_ns, g.batch, g.k, g.n));
  const int64_t cn = extent(g.c_bs, g.c_ms, g.c_ns, g.batch, g.m, g.n);
  Buffer C_cpu(size_t(cn) * esz(t)), C_gpu[2];
  g.a = A.data();
  g.b = B.data();
  g.c = C_cpu.data();
  block_gemm_cpu(g, 0, block_gemm_cpu_tasks(g));
  std::vector<double> M(size_t(g.batch * g.m * g.n));
  for (int64_t b = 0; b < g.batch; ++b)
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < g.k; ++p)
          s += std::fabs(double(get(t, A, b * g.a_bs + i * g.a_ms + p * g.a_ks)) * get(t, B, b * g.b_bs + p * g.b_ks + j * g.b_ns));
        M[size_t((b * g.m + i) * g.n + j)] = s;
      }
  int bad = 0;
  uint64_t copies0 = emu::total_copies;
  for (int mode = 0; mode < 2; ++mode) {
    emu::cp_async_lazy = mode == 0;
    C_gpu[mode] = Buffer(C_cpu.bytes, 0x7f);  // NaN (fp16) / huge where never written
    g.c = C_gpu[mode].data();
    g.splits = splits;
    std::vector<float> ws(size_t(splits > 1 ? splits * g.batch * g.m * g.n : 0) + 4);
    g.workspace = splits > 1 ? ws.data() : nullptr;
    const emu::BankTally banks_start = emu::BankTally::now();
    if (const char* e = launch_block_gemm(g, nullptr)) {
      std::printf("BAD %s: launch_block_gemm: %s\n", name, e);
      return 1;
    }
    const emu::BankTally banks = emu::BankTally::now() - banks_start;
    const uint64_t copies = emu::total_copies - copies0;
    copies0 = emu::total_copies;
    Cmp cmp;
    for (int64_t b = 0; b < g.batch; ++b)
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j) {
          const double m = M[size_t((b * g.m + i) * g.n + j)];
          cmp.add(get(t, C_gpu[mode], c_off(g, b, i, j)), get(t, C_cpu, c_off(g, b, i, j)), m, 0, eps_of(t));
        }
    const bool same = mode == 0 || C_gpu[0] == C_gpu[1];
    const bool ok = !cmp.bad && same && banks.conflict_free();  // the padded layouts' claim
    std::printf("%s gemm %-44s %-4s %-5s units %.2f cp.async %" PRIu64 "%s%s\n", ok ? "OK " : "BAD", name, tname(t),
                mode == 0 ? "lazy" : "eager", cmp.units, copies, same ? "" : "  MODES DIFFER", cmp.nan ? "  NaN" : "");
    if (cmp.bad) std::printf("    over tolerance: %" PRId64 " (NaN %" PRId64 ")\n", cmp.bad, cmp.nan);
    std::printf("    %s\n", banks.summary().c_str());
    std::fflush(stdout);
    bad += !ok;
  }
  emu::cp_async_lazy = false;
  return bad;
}

static int run_monarch(int64_t tokens, int64_t k, int64_t q, int64_t p, int64_t l, int64_t s, DType t, int64_t chunk,
                       int64_t bt, const char* name, int64_t units = 0, bool clusters = false) {
  const int64_t r = k * q / l;
  MonarchFused f;
  f.tokens = tokens; f.k = k; f.q = q; f.p = p; f.l = l; f.s = s; f.r = r; f.dtype = t;
  f.x_rs = k * p + 8;  // padded rows (still 16-byte multiples)
  f.y_rs = l * s + 8;
  Buffer x = random_buffer(rng, t, tokens * f.x_rs), w1 = random_buffer(rng, t, k * q * p), w2 = random_buffer(rng, t, l * s * r);
  Buffer y_cpu(size_t(tokens * f.y_rs) * 2);
  f.x = x.data(); f.w1 = w1.data(); f.w2 = w2.data(); f.y = y_cpu.data();
  MonarchFusedKnobs knobs;
  knobs.chunk = chunk, knobs.bt = bt, knobs.units = units;
  const MonarchFusedPlan plan = plan_monarch_fused(f, monarch_fused_smem_limit(0), true, knobs, clusters);
  if (!plan.fused) { std::printf("BAD monarch %s: not fused: %s\n", name, plan.why); return 1; }
  if ((plan.cluster > 0) != clusters) { std::printf("BAD monarch %s: cluster %d\n", name, plan.cluster); return 1; }
  monarch_fused_cpu(f, plan, 0, monarch_fused_cpu_tasks(f, plan));
  // M2[t][col]: Σ_i |u| |w2| in fp64 (u from fp64 stage 1, unrounded: first order is enough).
  std::vector<double> u(size_t(tokens * k * q));
  for (int64_t tk = 0; tk < tokens; ++tk)
    for (int64_t b = 0; b < k; ++b)
      for (int64_t i1 = 0; i1 < q; ++i1) {
        double acc = 0;
        for (int64_t c = 0; c < p; ++c) acc += double(get(t, x, tk * f.x_rs + b * p + c)) * get(t, w1, (b * q + i1) * p + c);
        u[size_t(tk * k * q + b * q + i1)] = acc;
      }
  int bad = 0;
  Buffer first;
  for (int mode = 0; mode < 2; ++mode) {
    emu::cp_async_lazy = mode == 0;
    Buffer y(y_cpu.bytes, 0x7f);
    f.y = y.data();
    const emu::BankTally banks_start = emu::BankTally::now();
    if (const char* e = launch_monarch_fused(f, plan, nullptr)) {
      std::printf("BAD monarch %s: %s\n", name, e);
      return 1;
    }
    const emu::BankTally banks = emu::BankTally::now() - banks_start;
    Cmp cmp;
    for (int64_t tk = 0; tk < tokens; ++tk)
      for (int64_t j = 0; j < l; ++j)
        for (int64_t t2 = 0; t2 < s; ++t2) {
          double m2 = 0;
          for (int64_t i = 0; i < r; ++i) m2 += std::fabs(u[size_t(tk * k * q + i * l + j)] * get(t, w2, (j * s + t2) * r + i));
          const int64_t o = tk * f.y_rs + t2 * l + j;
          cmp.add(get(t, y, o), get(t, y_cpu, o), m2, m2, eps_of(t));
        }
    if (mode == 0) first = y;
    const bool same = mode == 0 || first == y;
    const bool ok = !cmp.bad && same && banks.conflict_free();
    std::printf("%s monarch %-41s %-4s %-5s bt %d J %d U %d V %d cluster %d smem %" PRId64 " units %.2f%s%s\n",
                ok ? "OK " : "BAD", name, tname(t), mode == 0 ? "lazy" : "eager", plan.bt, plan.chunk, plan.units,
                plan.blocks, plan.cluster, plan.smem, cmp.units,
                same ? "" : "  MODES DIFFER", cmp.nan ? "  NaN" : "");
    if (cmp.bad) std::printf("    over tolerance: %" PRId64 " (NaN %" PRId64 ")\n", cmp.bad, cmp.nan);
    std::printf("    %s\n", banks.summary().c_str());
    std::fflush(stdout);
    bad += !ok;
  }
  emu::cp_async_lazy = false;
  return bad;
}

// The cluster kernel (sm_90, square Monarch): clusters of 4 (blocks of 32) and 8 CTAs (blocks of
// 64), two clusters resident (emu::active_clusters), so each walks over several tiles: the x
// ring of 3 and the double-buffered exchange wrap around, and the last tile is ragged. quick
// (for TSan, whose fiber contexts took 8 GB at B = 64: two clusters of 8 x 256 fibers at once)
// leaves out blocks of 64; the kernel's code is the same template, its races the same.
static int run_cluster_cases(bool quick) {
  const DType H = DType::kFloat16, B = DType::kBFloat16;
  int bad = 0;
  emu::active_clusters = 2;
  bad += run_monarch(150, 32, 32, 32, 32, 32, B, 0, 0, "cluster 4: 1024 features, T150 (5 tiles a cluster)", 0, true);
  bad += run_monarch(7, 32, 32, 32, 32, 32, H, 0, 0, "cluster 4: T7 (one cluster, one ragged tile)", 0, true);
  if (!quick) {
    bad += run_monarch(83, 64, 64, 64, 64, 64, H, 0, 0, "cluster 8: 4096 features, T83 (3 tiles a cluster)", 0, true);
    bad += run_monarch(100, 64, 64, 64, 64, 64, B, 0, 0, "cluster 8: T100 (4 tiles a cluster)", 0, true);
  }
  emu::active_clusters = 1;
  bad += run_monarch(50, 32, 32, 32, 32, 32, H, 0, 0, "cluster 4: one cluster resident, T50", 0, true);
  emu::active_clusters = 2;
  return bad;
}

#if defined(__x86_64__)
namespace mmm {  // the per-ISA copies of the CPU twin (core/cpu_variants.h), each called directly
namespace base { void run_tasks(const BlockGemm&, int64_t, int64_t); }
namespace avx2 { void run_tasks(const BlockGemm&, int64_t, int64_t); }
namespace avx512 { void run_tasks(const BlockGemm&, int64_t, int64_t); }
}  // namespace mmm
#include "core/cpu_features.h"

// The twin is the reference above, but only the copy this machine picks runs there: here each
// instruction-set copy the machine can run (baseline, AVX2, AVX-512: the micro-kernel's vector
// widths) against an fp64 product, with transposed operands, ragged tiles and a reduction that
// crosses the packing panel (2048).
static int check_cpu_variants() {
  struct Shape { int64_t nb, m, n, k; bool a_km, b_kn; } shapes[] = {
      {3, 70, 45, 37, false, false}, {2, 64, 32, 3000, true, false}, {4, 13, 100, 64, false, true}, {1, 7, 5, 2049, true, true}};
  void (*fns[3])(const BlockGemm&, int64_t, int64_t) = {base::run_tasks, avx2::run_tasks, avx512::run_tasks};
  const bool runs[3] = {true, cpu_has_avx2_fma_f16c(), cpu_has_avx512()};
  std::normal_distribution<float> nd;
  int bad = 0;
  for (const Shape& sh : shapes) {
    std::vector<float> A(size_t(sh.nb * sh.m * sh.k)), B(size_t(sh.nb * sh.k * sh.n));
    for (float& v : A) v = nd(rng);
    for (float& v : B) v = nd(rng);
    BlockGemm g;
    g.batch = sh.nb, g.m = sh.m, g.n = sh.n, g.k = sh.k, g.dtype = DType::kFloat32;
    g.a = A.data(), g.a_bs = sh.m * sh.k, g.a_ms = sh.a_km ? 1 : sh.k, g.a_ks = sh.a_km ? sh.m : 1;
    g.b = B.data(), g.b_bs = sh.k * sh.n, g.b_ks = sh.b_kn ? sh.n : 1, g.b_ns = sh.b_kn ? 1 : sh.k;
    g.c_bs = sh.m * sh.n, g.c_ms = sh.n, g.c_ns = 1;
    for (int v = 0; v < 3; ++v) {
      if (!runs[v]) continue;
      std::vector<float> C(size_t(sh.nb * sh.m * sh.n), NAN);
      g.c = C.data();
      fns[v](g, 0, block_gemm_cpu_tasks(g));
      Cmp cmp;
      for (int64_t b = 0; b < sh.nb; ++b)
        for (int64_t i = 0; i < sh.m; ++i)
          for (int64_t j = 0; j < sh.n; ++j) {
            double ref = 0, m = 0;
            for (int64_t p = 0; p < sh.k; ++p) {
              const double t = double(A[size_t(b * g.a_bs + i * g.a_ms + p * g.a_ks)]) * B[size_t(b * g.b_bs + p * g.b_ks + j * g.b_ns)];
              ref += t, m += std::fabs(t);
            }
            cmp.add(C[size_t(c_off(g, b, i, j))], ref, m, 0, 0);
          }
      std::printf("%s cpu twin %-6s nb%" PRId64 " m%" PRId64 " n%" PRId64 " k%" PRId64 "%s%s units %.2f\n", cmp.bad ? "BAD" : "OK ",
                  v == 0 ? "base" : v == 1 ? "avx2" : "avx512", sh.nb, sh.m, sh.n, sh.k, sh.a_km ? " A km" : "",
                  sh.b_kn ? " B kn" : "", cmp.units);
      bad += cmp.bad != 0;
    }
  }
  return bad;
}
#else
static int check_cpu_variants() { return 0; }
#endif

int main(int argc, char** argv) {
  emu::max_block_threads = 256;  // the kernels' __launch_bounds__
  emu::smem_fill = 0xff;         // never-written dynamic shared memory reads as NaN
  const DType H = DType::kFloat16, B = DType::kBFloat16, F = DType::kFloat32;
  int bad = 0;
  // steady: instead of the cases, the benchmark's 4096-feature shapes (64 blocks of 64) on a few
  // CTAs' worth of tokens, for the counts mode's throughput model; not part of the tests.
  bool quick = false;  // quick (TSan): the cluster kernel in clusters of 4 only (see run_cluster_cases)
  for (int i = 1; i < argc; ++i) quick = quick || std::string(argv[i]) == "quick";
  if (argc > 1 && std::string(argv[1]) == "cluster") {  // only the cluster kernel's cases (development)
    bad += run_cluster_cases(quick);
    std::printf(bad ? "FAILURES: %d\n" : "all ok %d\n", bad);
    return bad != 0;
  }
  if (argc > 1 && std::string(argv[1]) == "steady") {
    bad += run_gemm(block_diag_fwd(nullptr, 64 * 64, nullptr, nullptr, 64 * 64, 256, 64, 64, 64, B),
                    "steady: block_diag fwd 4096 features, 64 blocks, T256");
    bad += run_monarch(64, 64, 64, 64, 64, 64, B, 0, 0, "steady: 4096 features, blocks of 64, T64");
    bad += run_monarch(64, 64, 64, 64, 64, 64, B, 0, 0, "steady: the same, one GEMM a step", 1);
    bad += run_monarch(64, 32, 32, 32, 32, 32, B, 0, 0, "steady: 1024 features, blocks of 32, T64");
    bad += run_monarch(64, 32, 32, 32, 32, 32, B, 0, 0, "steady: the same, one GEMM a step", 1);
    std::printf(bad ? "FAILURES: %d\n" : "all ok %d\n", bad);
    return bad != 0;
  }
  bad += check_cpu_variants();
  // block_diag_matmul: x (tokens, nb*k) -> y (tokens, nb*n) with w (nb, n, k).
  {
    const int64_t T = 150, nb = 3, n = 48, k = 40;
    bad += run_gemm(block_diag_fwd(nullptr, nb * k, nullptr, nullptr, nb * n, T, nb, n, k, H), "fwd 3 blocks T150 n48 k40 (A mk, B nk)");
    bad += run_gemm(block_diag_dx(nullptr, nb * n, nullptr, nullptr, nb * k, T, nb, n, k, B), "dx (A mk, B kn)");
    bad += run_gemm(block_diag_dw(nullptr, nb * n, nullptr, nb * k, nullptr, T, nb, n, k, H), "dw (A km, B kn)");
    bad += run_gemm(block_diag_fwd(nullptr, nb * k, nullptr, nullptr, nb * n, T, nb, n, k, F), "fwd fp32 (FMA kernel)");
    BlockGemm simt = block_diag_fwd(nullptr, nb * k, nullptr, nullptr, nb * n, T, nb, n, k, B);
    simt.simt_only = true;
    bad += run_gemm(simt, "fwd simt_only");
  }
  // One block, ragged k = 36 with 16-byte-multiple row strides: vector staging whose last chunk
  // of each row has 4 valid elements (src-size 8, the rest zero-filled). (block_diag_fwd's
  // block stride k = 36 would send it to element staging, hence a descriptor of its own.)
  {
    BlockGemm g;
    g.batch = 1; g.m = 150; g.n = 20; g.k = 36;
    g.a_ms = 40; g.a_ks = 1;
    g.b_ks = 1; g.b_ns = 40;
    g.c_ms = 24; g.c_ns = 1;
    g.dtype = B;
    bad += run_gemm(g, "1 block m150 n20 k36 (partial chunks)");
  }
  bad += run_gemm(block_diag_fwd(nullptr, 36 * 2, nullptr, nullptr, 20 * 2, 150, 2, 20, 36, H), "fwd k36 (element staging)");
  // Split-K dweight: the reduction over 700 tokens in 4 ranges (and one that gets no K-tile).
  bad += run_gemm(block_diag_dw(nullptr, 2 * 24, nullptr, 2 * 40, nullptr, 700, 2, 24, 40, H), "dw split-K 4", 4);
  bad += run_gemm(block_diag_dw(nullptr, 2 * 24, nullptr, 2 * 40, nullptr, 100, 2, 24, 40, B), "dw split-K 3 (last range empty)", 3);
  // A stored [k][m] (a_ms = 1) with B [n][k]: the fourth staging variant, m = 70 ragged in a chunk.
  {
    BlockGemm g;
    g.batch = 2; g.m = 70; g.n = 40; g.k = 50;
    g.a_ms = 1; g.a_ks = 80; g.a_bs = 50 * 80;
    g.b_ks = 1; g.b_ns = 56; g.b_bs = 40 * 56;
    g.c_ms = 40; g.c_ns = 1; g.c_bs = 70 * 40;
    g.dtype = H;
    bad += run_gemm(g, "A km x B nk, m70 n40 k50 2 blocks");
  }
  // Grids capped at one CTA in y and z (the hardware's 65535, lowered): each CTA strides over
  // C tiles and blocks, and each tile's pipeline refills stages the previous tile read last.
  emu::grid_yz_limit = 1;
  bad += run_gemm(block_diag_fwd(nullptr, 3 * 40, nullptr, nullptr, 3 * 48, 300, 3, 48, 40, B), "fwd T300 3 blocks, grid y/z capped at 1");
  bad += run_gemm(block_diag_dw(nullptr, 2 * 24, nullptr, 2 * 40, nullptr, 300, 2, 24, 40, H), "dw split-K 2, grid capped", 2);
  bad += run_gemm(block_diag_fwd(nullptr, 3 * 40, nullptr, nullptr, 3 * 48, 150, 3, 48, 40, F), "fwd fp32 (FMA kernel), grid capped");
  emu::grid_yz_limit = 65535;
  // Monarch stage 2 (element staging: strides l).
  bad += run_gemm(monarch_stage2_fwd(nullptr, 16 * 16, nullptr, nullptr, 16 * 32, 45, 16, 32, 16, H), "monarch stage2 fwd l16 s32 r16");
  bad += run_gemm(monarch_stage2_dw(nullptr, 16 * 32, nullptr, 16 * 16, nullptr, 45, 16, 32, 16, B), "monarch stage2 dw");

  // Fused Monarch forward.  tokens k q p l s
  bad += run_monarch(45, 8, 64, 16, 32, 16, H, 0, 0, "by rows k8 q64 p16 l32 s16");
  bad += run_monarch(45, 8, 64, 16, 32, 16, B, 16, 16, "by rows, J16 < l32, bt16 (n1 32, s16: U2 V4)");
  bad += run_monarch(45, 8, 64, 16, 32, 16, H, 16, 16, "the same, one GEMM a step", 1);
  bad += run_monarch(40, 32, 16, 16, 32, 32, B, 0, 32, "by blocks k32 q16 p16 l32 s32 bt32 (4 units)");
  bad += run_monarch(40, 32, 16, 16, 32, 32, H, 16, 16, "by blocks J16 bt16, 2 GEMMs a step", 2);
  bad += run_monarch(37, 32, 32, 32, 64, 16, B, 32, 32, "by blocks q32 l64 J32 (2 units a step, 2 chunks)");
  bad += run_monarch(33, 16, 80, 80, 16, 16, H, 0, 16, "by rows p80 r80 (2 K slices) bt16");
  bad += run_cluster_cases(quick);

  std::printf("max smem used %zu, cp.async copies %" PRIu64 "\n", emu::max_smem_used, emu::total_copies);
  std::printf(bad ? "FAILURES: %d\n" : "all ok %d\n", bad);
  return bad != 0;
}
