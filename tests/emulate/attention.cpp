// Runs launch_attention_fwd / launch_attention_bwd (csrc/attention: the real launcher, kernels
// and instantiations for head dims 64 and 96, compiled for the host by tests/emulate/run.sh)
// on CPU threads - one fiber per CUDA thread, ldmatrix / mma.sync / cp.async modelled by
// ptx_on_cpu.h, under ASan/UBSan or ThreadSanitizer - against the CPU twin (attention_fwd_cpu / attention_bwd_cpu)
// on the same fp16/bf16 inputs.
//   tests/emulate/run.sh attention [quick]
// (tests/test_attention.py::test_cuda_kernels_on_cpu_threads runs it when MMM_EMULATE=1).
//
// First a self-test of the PTX models (ldmatrix of an iota tile and its bank-conflict count, mma
// on small integers, the fragment recipes of core/mma.cuh, pack2, cp.async groups in both modes,
// and - in forked children - the errors the models must raise and, under TSan, the races it must
// report, inside a block and between CTAs), then the attention cases: ragged Sq/Sk (tiles
// cut by the sequence end), causal with Sq < Sk and Sq > Sk (rows and whole CTAs with no key:
// out = 0, lse = +inf, no NaN), sliding windows that skip key tiles, GQA, head dims padded up
// to the kernel's (40 -> 64, 80 -> 96), strided (B, S, H, D) and padded-row layouts, the lse
// gradient, fp16 and bf16, both cp.async modes, and the backward run twice (bitwise equal), then
// in its atomic-dQ mode where the build has it (head dims up to 128: dq against the twin, dk
// and dv bitwise those of the deterministic mode).
// Every ldmatrix and every cp.async store must be free of shared-memory bank conflicts (the
// swizzles' claim; counted by ptx_on_cpu.h from the lanes' addresses).
//
// Tolerance. Kernel and twin see the same 16-bit inputs and accumulate in fp32; they differ in
// that the kernel rounds P (forward, and dV's Pᵀ) and dS (dK, dQ) to the input type before the
// second tensor-core product (the twin keeps fp32), in the fp32 summation order, and in the final
// rounding of two slightly different fp32 results. With eps the type's machine epsilon (2^-10
// fp16, 2^-7 bf16) the rounding of P / dS moves an output by at most eps/2 · M, M being the
// element's sum of absolute terms (fp64, from the same inputs: Σ_j P_ij |V_jd| for out,
// Σ_i P_ij |dO_id| for dV, scale · Σ |dS| |Q| or |K| for dK, dQ), and the final roundings by
// eps/2 · |value| each. The check is |kernel - twin| <= eps · M + 2 eps · |twin| + 1e-5 · N
// + 1e-6: twice the first-order bound, plus fp32 noise (N = M for out and dV; for dQ and dK
// N = scale · Σ P (|dP| + |delta|) · |K| or |Q|, since dP - delta cancels in fp32 where a row's
// P is concentrated). An index or layout bug moves an element by O(M) and fails it by orders of
// magnitude; the line printed per case gives the worst |kernel - twin| / (eps/2 · M + eps ·
// |twin| + 2^-22 · N) ("units"), <= 1 in first-order theory (the worst element is printed when
// it is over 1). Measured: 0.2-0.8 units everywhere but elements with M = 0 (pure fp32 noise).
// lse: |kernel - twin| <= 1e-4 · (1 + |lse|) (both fp32), and +inf exactly where a row has no key.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ptx_on_cpu.h"
#include "attention/params.h"
#include "core/cp_async.cuh"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

using namespace mmm;

static int failures = 0;
static void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("SELF-TEST FAILED: %s\n", what);
    ++failures;
  }
}

// ---- self-test of the PTX models -----------------------------------------------------------------

static void self_test_ldmatrix() {
  // 32 rows of 8 b16 elements, element (r, c) = 8r + c; lane l passes row l: matrix j = rows 8j..8j+7.
  for (bool trans : {false, true}) {
    std::atomic<int> bad{0};
    launch_grid(1, 32, 32 * 16, [&] {
      auto* tile = static_cast<uint16_t*>(emu::smem);
      const unsigned l = threadIdx.x;
      for (int c = 0; c < 8; ++c) tile[l * 8 + c] = uint16_t(l * 8 + c);
      __syncwarp();
      uint32_t r[4];
      if (trans) ldmatrix_x4_trans(r, tile + l * 8);
      else ldmatrix_x4(r, tile + l * 8);
      for (unsigned j = 0; j < 4; ++j) {
        // Hand-written from the PTX ISA figures: non-trans lane l holds row l/4, columns 2(l%4) and
        // 2(l%4)+1 of matrix j; trans holds column l/4, rows 2(l%4) and 2(l%4)+1.
        const uint32_t lo = trans ? (8 * j + 2 * (l % 4)) * 8 + l / 4 : (8 * j + l / 4) * 8 + 2 * (l % 4);
        const uint32_t hi = trans ? lo + 8 : lo + 1;
        if (r[j] != (lo | hi << 16)) bad++;
      }
    });
    check(bad == 0, trans ? "ldmatrix.x4.trans of an iota tile" : "ldmatrix.x4 of an iota tile");
  }
  // The bank-conflict count: lane l's row at l * stride bytes. 16 (contiguous) and 144 (16 mod
  // 128) are conflict-free, 0 is a broadcast; 32 puts each matrix's rows two to a 16-byte bank
  // group (one extra wavefront per matrix), 128 all eight in one (seven extra).
  for (const auto [stride, conflicts] : {std::pair{16, 0}, {144, 0}, {0, 0}, {32, 4}, {128, 28}}) {
    const emu::BankTally before = emu::BankTally::now();
    launch_grid(1, 32, 32 * 144 + 16, [&, stride = stride] {
      uint32_t r[4];
      ldmatrix_x4(r, static_cast<char*>(emu::smem) + threadIdx.x * stride);
    });
    const emu::BankTally banks = emu::BankTally::now() - before;
    char what[80];
    std::snprintf(what, sizeof what, "ldmatrix rows %d bytes apart: %d bank conflicts", stride, conflicts);
    check(banks.ldmatrix == 4 && banks.ldmatrix_conflicts() == uint64_t(conflicts), what);
  }
  // cp.async's stores, a quarter warp per wavefront: contiguous 16-byte chunks are conflict-free;
  // two 64-byte rows per quarter at an 80-byte pitch collide once per quarter; the same rows
  // through padded_tile_chunk (rows 4 apart per quarter) do not.
  struct CpCase { const char* what; int conflicts; int (*offset)(int lane); };
  const CpCase cp_cases[] = {
      {"cp.async to contiguous chunks: no bank conflicts", 0, [](int l) { return 16 * l; }},
      {"cp.async of 4-chunk rows, 80-byte pitch, row-major: 4 bank conflicts", 4,
       [](int l) { return 80 * (l / 4) + 16 * (l % 4); }},
      {"cp.async of 4-chunk rows, 80-byte pitch, padded_tile_chunk: no bank conflicts", 0, [](int l) {
         int row, chunk;
         mmm::padded_tile_chunk(l, 4, 8, row, chunk);
         return 80 * row + 16 * chunk;
       }},
  };
  for (const CpCase& c : cp_cases) {
    static uint8_t src[16] __attribute__((aligned(16)));
    const emu::BankTally before = emu::BankTally::now();
    launch_grid(1, 32, 8 * 80, [&] {
      mmm::cp_async_16(static_cast<uint8_t*>(emu::smem) + c.offset(int(threadIdx.x)), src, true);
      mmm::cp_async_commit();
      mmm::cp_async_wait<0>();
    });
    const emu::BankTally banks = emu::BankTally::now() - before;
    check(banks.cp_async == 4 && banks.cp_async_conflicts() == uint64_t(c.conflicts), c.what);
  }
}

static float ai(int i, int k) { return float((i * 3 + k * 5) % 7 - 3); }
static float bi(int k, int n) { return float((k * 2 + n * 3) % 5 - 2); }
static float ci(int i, int n) { return float(i - 2 * n); }

template <typename T>
static uint32_t pack_bits(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) return uint32_t(__float2half_rn(lo).bits) | uint32_t(__float2half_rn(hi).bits) << 16;
  else return uint32_t(__float2bfloat16_rn(lo).bits) | uint32_t(__float2bfloat16_rn(hi).bits) << 16;
}

template <typename T>
static void self_test_mma() {
  // Fragments built by the register-level description (PTX-NOTES / mma.cuh's comment form: a_r =
  // (g + 8(r&1), 2t + 8(r>>1)), b_r = (k 2t + 8r, n g), c_i = (g + 8(i/2), 2t + i%2)), a
  // different spelling of the per-element maps ptx_on_cpu.h inverts. Small integers: exact.
  std::atomic<int> bad{0};
  launch_grid(1, 32, 0, [&] {
    const int l = int(threadIdx.x), g = l / 4, t = l % 4;
    uint32_t a[4], b[2];
    float d[4];
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
      a[r] = pack_bits<T>(ai(row, col), ai(row, col + 1));
    }
    for (int r = 0; r < 2; ++r) b[r] = pack_bits<T>(bi(2 * t + 8 * r, g), bi(2 * t + 8 * r + 1, g));
    for (int i = 0; i < 4; ++i) d[i] = ci(g + 8 * (i / 2), 2 * t + i % 2);
    mma_m16n8k16<T>(d, a, b);
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float want = ci(row, col);
      for (int k = 0; k < 16; ++k) want += ai(row, k) * bi(k, col);
      if (d[i] != want) bad++;
    }
  });
  check(bad == 0, std::is_same_v<T, __half> ? "mma m16n8k16 f16 on integers" : "mma m16n8k16 bf16 on integers");
}

// core/mma.cuh's recipes (load_a_frag, load_b_frags on [n][k], load_b_frags_kn on [k][n]) on
// padded tiles, through the models: D (16 x 16) = A (16 x 16) · B (16 x 16).
template <typename T>
static void self_test_recipes() {
  constexpr int P = 24;  // pitch in elements (48 bytes: rows stay 16-byte aligned)
  std::atomic<int> bad{0};
  launch_grid(1, 32, 3 * 16 * P * 2, [&] {
    T* sa = static_cast<T*>(emu::smem);  // [m][k]
    T* sb = sa + 16 * P;                 // [n][k]
    T* sbkn = sb + 16 * P;               // [k][n]
    const int l = int(threadIdx.x);
    if (l < 16)
      for (int c = 0; c < 16; ++c) {
        sa[l * P + c] = from_f<T>(ai(l, c));
        sb[l * P + c] = from_f<T>(bi(c, l));    // row n = l, column k = c
        sbkn[l * P + c] = from_f<T>(bi(l, c));  // row k = l, column n = c
      }
    __syncwarp();
    uint32_t a[4], b_lo[2], b_hi[2], c_lo[2], c_hi[2];
    load_a_frag(a, sa, P, 0, 0);
    load_b_frags(b_lo, b_hi, sb, P, 0, 0);
    load_b_frags_kn(c_lo, c_hi, sbkn, P, 0, 0);
    float d[4][4] = {};
    mma_m16n8k16<T>(d[0], a, b_lo);
    mma_m16n8k16<T>(d[1], a, b_hi);
    mma_m16n8k16<T>(d[2], a, c_lo);
    mma_m16n8k16<T>(d[3], a, c_hi);
    const int g = l / 4, t = l % 4;
    for (int f = 0; f < 4; ++f)
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 8 * (f % 2) + 2 * t + i % 2;
        float want = 0;
        for (int k = 0; k < 16; ++k) want += ai(row, k) * bi(k, col);
        if (d[f][i] != want) bad++;
      }
    // pack2: the first value in the low half.
    const uint32_t p = pack2<T>(1.f, -2.f);
    if (p != pack_bits<T>(1.f, -2.f) || (p & 0xffffu) != (pack_bits<T>(1.f, 0.f) & 0xffffu)) bad++;
  });
  check(bad == 0, std::is_same_v<T, __half> ? "core/mma.cuh fragment recipes (f16)" : "core/mma.cuh fragment recipes (bf16)");
}

static void self_test_cp_async() {
  std::vector<uint8_t> src(32 * 32);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 7 + 1);
  for (bool lazy : {false, true}) {
    emu::cp_async_lazy = lazy;
    std::atomic<int> bad{0};
    launch_grid(1, 32, 32 * 48, [&] {
      auto* s = static_cast<uint8_t*>(emu::smem);
      const unsigned t = threadIdx.x;
      uint8_t* d0 = s + t * 16;         // group 0
      uint8_t* d1 = s + 512 + t * 16;   // group 1
      uint8_t* d2 = s + 1024 + t * 16;  // group 1, zero-filled (src-size 0)
      std::memset(d2, 0x55, 16);
      mmm::cp_async_16(d0, src.data() + t * 16, true);
      mmm::cp_async_commit();
      mmm::cp_async_16(d1, src.data() + 512 + t * 16, true);
      mmm::cp_async_16(d2, src.data(), false);
      mmm::cp_async_commit();
      auto landed = [&](const uint8_t* d, const uint8_t* from) { return std::memcmp(d, from, 16) == 0; };
      const uint8_t zeros[16] = {}, ffs[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
      if (lazy && !(landed(d0, ffs) && landed(d1, ffs) && landed(d2, ffs))) bad++;     // poisoned until waited
      if (!lazy && !(landed(d0, src.data() + t * 16) && landed(d2, zeros))) bad++;      // eager: landed at issue
      mmm::cp_async_wait<1>();  // group 0 only
      if (!landed(d0, src.data() + t * 16)) bad++;
      if (lazy && !landed(d1, ffs)) bad++;
      mmm::cp_async_wait<0>();
      if (!landed(d1, src.data() + 512 + t * 16) || !landed(d2, zeros)) bad++;
    });
    check(bad == 0, lazy ? "cp.async groups (lazy)" : "cp.async groups (eager)");
  }
  emu::cp_async_lazy = false;
}

// The errors the models must raise (and the races TSan must report), each in a forked child that
// must fail.
static void self_test_errors() {
  struct Case { const char* what; std::function<void()> body; };
  const std::vector<Case> cases = {
      {"exit with a cp.async group not waited for", [] {
         static uint8_t src[16] __attribute__((aligned(16)));
         launch_grid(1, 32, 512, [] {
           mmm::cp_async_16(static_cast<uint8_t*>(emu::smem) + 16 * threadIdx.x, src, true);
           mmm::cp_async_commit();
         });
       }},
      {"threads committing different numbers of groups", [] {
         launch_grid(1, 32, 0, [] {
           if (threadIdx.x == 3) mmm::cp_async_commit();
         });
       }},
      {"lanes in different warp collectives", [] {
         launch_grid(1, 32, 64, [] {
           uint32_t r[4];
           float d[4] = {};
           const uint32_t a[4] = {}, b[2] = {};
           if (threadIdx.x == 5) mmm::mma_m16n8k16<__half>(d, a, b);
           else ldmatrix_x4(r, emu::smem);
         });
       }},
      {"misaligned ldmatrix row", [] {
         launch_grid(1, 32, 64, [] {
           uint32_t r[4];
           ldmatrix_x4(r, static_cast<char*>(emu::smem) + 8);
         });
       }},
      {"cp.async past the end of dynamic shared memory", [] {
         static uint8_t src[16] __attribute__((aligned(16)));
         launch_grid(1, 32, 512, [] {
           mmm::cp_async_16(static_cast<uint8_t*>(emu::smem) + 16 * threadIdx.x + 16, src, true);
           mmm::cp_async_commit();
           mmm::cp_async_wait<0>();
         });
       }},
#if defined(__SANITIZE_THREAD__)
      // What ThreadSanitizer must report in the emulation (cuda_on_cpu.h): two warps of a block
      // that no barrier orders, and two CTAs (blocks 0 and 1 run on different thread sets).
      {"a shared-memory race between two warps (no __syncthreads)", [] {
         launch_grid(1, 64, 64, [] {
           volatile int* s = static_cast<int*>(emu::smem);
           if (threadIdx.x == 0) s[0] = 1;
           if (threadIdx.x == 32) (void)s[0];
         });
       }},
      {"two CTAs writing one global word", [] {
         static volatile int word;  // volatile: a store nobody reads is still made
         launch_grid(2, 32, 0, [] {
           if (threadIdx.x == 0) word = int(blockIdx.x);
         });
       }},
#endif
  };
  for (const Case& c : cases) {
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
      // The child's own report goes to /dev/null: only its death matters here.
      if (!freopen("/dev/null", "w", stderr)) _exit(0);
      c.body();
      _exit(0);  // reached only if the model missed the error
    }
    int status = 0;
    waitpid(pid, &status, 0);
    check(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), c.what);
  }
}

// ---- attention -------------------------------------------------------------------------------------

static std::mt19937 rng(7);

struct Tensor {  // (B, H, S, D) of 16-bit elements with the given strides (unit stride along D)
  std::vector<uint16_t> data;
  AttentionStrides s;
  int64_t B, H, S, D;
  // layout 0: contiguous (B, H, S, D); 1: (B, S, H, D) viewed as (B, H, S, D); 2: contiguous with
  // rows padded by 8 elements (16-byte aligned, never read).
  Tensor(int64_t b, int64_t h, int64_t sl, int64_t d, int layout) : B(b), H(h), S(sl), D(d) {
    const int64_t pitch = layout == 2 ? d + 8 : d;
    if (layout == 1) s = {sl * h * d, d, h * d};
    else s = {h * sl * pitch, sl * pitch, pitch};
    data.assign(size_t(std::max<int64_t>(b * h * sl * pitch, 1)), 0x7fff);  // NaN (fp16 and bf16) in the gaps
  }
  int64_t at(int64_t b, int64_t h, int64_t i, int64_t d) const { return b * s.batch + h * s.head + i * s.row + d; }
};

static float get(DType t, uint16_t v) { return t == DType::kFloat16 ? to_float(Half{v}) : to_float(BFloat16{v}); }
static uint16_t put(DType t, float f) { return t == DType::kFloat16 ? from_float<Half>(f).bits : from_float<BFloat16>(f).bits; }

static void fill(Tensor& x, DType t, float sd) {
  std::normal_distribution<float> nd(0.f, sd);
  for (int64_t b = 0; b < x.B; ++b)
    for (int64_t h = 0; h < x.H; ++h)
      for (int64_t i = 0; i < x.S; ++i)
        for (int64_t d = 0; d < x.D; ++d) x.data[size_t(x.at(b, h, i, d))] = put(t, nd(rng));
}

struct Case {
  int64_t B, Hq, Hkv, Sq, Sk, D;
  int64_t wl, wr;  // window (-1 unbounded); causal = (-1, 0)
  DType dtype;
  int layout_q, layout_kv;
  bool dlse;
  const char* name;
};

// Worst ratio err / (eps/2·M + eps·|ref| + 2^-22·N) and the number of elements over the tolerance;
// N is the fp32-noise magnitude (for dQ, dK: scale · Σ P (|dP| + |delta|) |K| or |Q|, which
// covers the cancellation in dP - delta; for out and dV: M).
struct Cmp {
  double units = 0, worst[3] = {0, 0, 0};
  int64_t bad = 0, nan = 0;
  void add(double got, double ref, double m, double n, double eps) {
    if (std::isnan(got)) { ++nan; ++bad; return; }
    const double err = std::fabs(got - ref);
    if (err > eps * m + 2 * eps * std::fabs(ref) + 1e-5 * n + 1e-6) ++bad;
    const double unit = eps / 2 * m + eps * std::fabs(ref) + 0x1p-22 * n;
    const double u = unit > 0 ? err / unit : err > 0 ? INFINITY : 0;
    if (u > units) { units = u; worst[0] = got; worst[1] = ref; worst[2] = m; }
  }
};

static bool visible(const Case& c, int64_t i, int64_t j) {
  const int64_t shift = c.Sk - c.Sq;
  return (c.wr < 0 || j <= i + shift + c.wr) && (c.wl < 0 || j >= i + shift - c.wl);
}

static int run_case(const Case& c, bool quick) {
  const DType t = c.dtype;
  const double eps = t == DType::kFloat16 ? 1.0 / 1024 : 1.0 / 128;
  const int64_t group = c.Hq / c.Hkv, D = c.D;
  Tensor q(c.B, c.Hq, c.Sq, D, c.layout_q), k(c.B, c.Hkv, c.Sk, D, c.layout_kv), v(c.B, c.Hkv, c.Sk, D, c.layout_kv);
  Tensor dout(c.B, c.Hq, c.Sq, D, c.layout_q);
  fill(q, t, 1.f);
  fill(k, t, 1.f);
  fill(v, t, 1.f);
  fill(dout, t, 1.f);
  const int64_t rows = c.B * c.Hq * c.Sq;
  std::vector<float> dlse(static_cast<size_t>(rows));
  for (float& x : dlse) x = std::normal_distribution<float>(0.f, 0.5f)(rng);

  AttentionFwdParams p;
  p.batch = c.B; p.heads_q = c.Hq; p.heads_kv = c.Hkv; p.seqlen_q = c.Sq; p.seqlen_k = c.Sk; p.head_dim = D;
  p.q = q.data.data(); p.q_s = q.s; p.k = k.data.data(); p.k_s = k.s; p.v = v.data.data(); p.v_s = v.s;
  p.dtype = t; p.scale = float(1 / std::sqrt(double(D))); p.window_left = c.wl; p.window_right = c.wr;

  // CPU twin forward.
  Tensor out_cpu(c.B, c.Hq, c.Sq, D, c.layout_q);
  std::vector<float> lse_cpu(static_cast<size_t>(rows));
  p.out = out_cpu.data.data(); p.o_s = out_cpu.s; p.lse = lse_cpu.data();
  attention_fwd_cpu(p, 0, attention_fwd_cpu_tasks(p));

  // fp64 magnitudes (and P, dS) from the same inputs.
  std::vector<double> m_out(size_t(rows * D)), m_dq(size_t(rows * D)), m_dk(size_t(c.B * c.Hkv * c.Sk * D)),
      m_dv(m_dk.size()), n_dq(m_dq.size()), n_dk(m_dk.size());
  std::vector<char> has_key(static_cast<size_t>(rows));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const int64_t hk = h / group;
      for (int64_t i = 0; i < c.Sq; ++i) {
        const int64_t r = (b * c.Hq + h) * c.Sq + i;
        std::vector<double> s(size_t(c.Sk), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < c.Sk; ++j) {
          if (!visible(c, i, j)) continue;
          double acc = 0;
          for (int64_t d = 0; d < D; ++d)
            acc += double(get(t, q.data[size_t(q.at(b, h, i, d))])) * get(t, k.data[size_t(k.at(b, hk, j, d))]);
          s[size_t(j)] = acc * p.scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        has_key[size_t(r)] = mx > -INFINITY;
        if (!has_key[size_t(r)]) continue;
        double l = 0;
        for (double& x : s) l += (x = std::exp(x - mx));
        double delta = c.dlse ? -double(dlse[size_t(r)]) : 0;
        for (int64_t d = 0; d < D; ++d)
          delta += double(get(t, dout.data[size_t(dout.at(b, h, i, d))])) * get(t, out_cpu.data[size_t(out_cpu.at(b, h, i, d))]);
        for (int64_t j = 0; j < c.Sk; ++j) {
          const double pij = s[size_t(j)] / l;
          if (pij == 0) continue;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d)
            dp += double(get(t, dout.data[size_t(dout.at(b, h, i, d))])) * get(t, v.data[size_t(v.at(b, hk, j, d))]);
          const double ds = std::fabs(pij * (dp - delta)) * p.scale, dsn = pij * (std::fabs(dp) + std::fabs(delta)) * p.scale;
          const int64_t kr = ((b * c.Hkv + hk) * c.Sk + j) * D;
          for (int64_t d = 0; d < D; ++d) {
            const double vv = std::fabs(get(t, v.data[size_t(v.at(b, hk, j, d))]));
            const double kk = std::fabs(get(t, k.data[size_t(k.at(b, hk, j, d))]));
            m_out[size_t(r * D + d)] += pij * vv;
            const double qq = std::fabs(get(t, q.data[size_t(q.at(b, h, i, d))]));
            m_dq[size_t(r * D + d)] += ds * kk;
            n_dq[size_t(r * D + d)] += dsn * kk;
            m_dk[size_t(kr + d)] += ds * qq;
            n_dk[size_t(kr + d)] += dsn * qq;
            m_dv[size_t(kr + d)] += pij * std::fabs(get(t, dout.data[size_t(dout.at(b, h, i, d))]));
          }
        }
      }
    }

  // CPU twin backward (on the twin's out and lse; the kernels get the same).
  AttentionBwdParams bp;
  bp.fwd = p;
  bp.dout = dout.data.data(); bp.do_s = dout.s;
  bp.dlse = c.dlse ? dlse.data() : nullptr;
  Tensor dq_cpu(c.B, c.Hq, c.Sq, D, c.layout_q), dk_cpu(c.B, c.Hkv, c.Sk, D, c.layout_kv), dv_cpu(c.B, c.Hkv, c.Sk, D, c.layout_kv);
  bp.dq = dq_cpu.data.data(); bp.dq_s = dq_cpu.s; bp.dk = dk_cpu.data.data(); bp.dk_s = dk_cpu.s;
  bp.dv = dv_cpu.data.data(); bp.dv_s = dv_cpu.s;
  {
    const AttentionBwdCpuPlan plan = attention_bwd_cpu_plan(bp, 1);
    std::vector<char> ws(plan.workspace_bytes + 16);
    bp.workspace = ws.data();
    for (int phase = 0; phase < 3; ++phase) attention_bwd_cpu(bp, plan, phase, 0, plan.tasks[phase]);
  }

  int bad = 0;
  std::vector<uint16_t> first_out, first_dq, first_dk, first_dv;
  std::vector<float> first_lse;
  for (bool lazy : {true, false}) {
    if (quick && !lazy) break;
    emu::cp_async_lazy = lazy;
    // Kernel forward.
    Tensor out(c.B, c.Hq, c.Sq, D, c.layout_q);
    std::vector<float> lse(size_t(rows), NAN);
    AttentionFwdParams pg = p;
    pg.out = out.data.data(); pg.lse = lse.data();
    const emu::BankTally fwd_start = emu::BankTally::now();
    const char* e = launch_attention_fwd(pg, nullptr);
    const emu::BankTally fwd_banks = emu::BankTally::now() - fwd_start;
    if (e) { std::printf("BAD %s: launch_attention_fwd: %s\n", c.name, e); return 1; }
    Cmp co;
    int64_t lse_bad = 0;
    double lse_err = 0;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t i = 0; i < c.Sq; ++i) {
          const int64_t r = (b * c.Hq + h) * c.Sq + i;
          for (int64_t d = 0; d < D; ++d)
            co.add(get(t, out.data[size_t(out.at(b, h, i, d))]), get(t, out_cpu.data[size_t(out_cpu.at(b, h, i, d))]),
                   m_out[size_t(r * D + d)], m_out[size_t(r * D + d)], eps);
          const float lg = lse[size_t(r)], lc = lse_cpu[size_t(r)];
          if (!has_key[size_t(r)]) {
            if (!(std::isinf(lg) && lg > 0) || !(std::isinf(lc) && lc > 0)) ++lse_bad;
          } else {
            const double err = std::fabs(double(lg) - lc);
            lse_err = std::max(lse_err, err);
            if (!(err <= 1e-4 * (1 + std::fabs(lc)))) ++lse_bad;
          }
        }
    // Kernel backward on the twin's out and lse, in the given mode: its dq, dk, dv.
    const auto kernel_bwd = [&](bool deterministic, std::vector<uint16_t> (&res)[3]) {
      AttentionBwdParams bg = bp;
      bg.deterministic = deterministic;
      Tensor dq(c.B, c.Hq, c.Sq, D, c.layout_q), dk(c.B, c.Hkv, c.Sk, D, c.layout_kv), dv(c.B, c.Hkv, c.Sk, D, c.layout_kv);
      std::vector<char> ws(attention_bwd_cuda_workspace_bytes(bg) + 16);
      bg.workspace = ws.data();
      bg.dq = dq.data.data(); bg.dk = dk.data.data(); bg.dv = dv.data.data();
      bg.dq_s = dq.s; bg.dk_s = dk.s; bg.dv_s = dv.s;
      const char* err = launch_attention_bwd(bg, nullptr);
      res[0] = dq.data; res[1] = dk.data; res[2] = dv.data;
      return err;
    };
    // Deterministic twice (bitwise equal); then the atomic-dQ kernel, where the build has one for
    // this head dim: dq against the twin like the others, dk and dv bitwise those of the
    // deterministic kernels (the same products summed in the same order; only dq's sum order is
    // the atomics'). Unless quick, again on a GPU with 99 KB of opt-in shared memory (RTX 30/40),
    // where d <= 64 takes the 64-query-step kernel instead of the 128-query one.
    std::vector<uint16_t> runs[2][3], atomic_run[3], atomic_small[3];
    const emu::BankTally bwd_start = emu::BankTally::now();
    for (int rep = 0; rep < (quick ? 1 : 2); ++rep)
      if ((e = kernel_bwd(true, runs[rep]))) { std::printf("BAD %s: launch_attention_bwd: %s\n", c.name, e); return 1; }
    AttentionBwdParams ba = bp;
    ba.deterministic = false;
    const bool atomic = attention_bwd_uses_atomic_dq(ba);
    if (atomic && (e = kernel_bwd(false, atomic_run))) {
      std::printf("BAD %s: launch_attention_bwd (atomic dq): %s\n", c.name, e);
      return 1;
    }
    bool atomic_small_run = false;
    if (atomic && !quick) {
      const int optin = emu::optin_smem;
      emu::optin_smem = 99 * 1024;
      atomic_small_run = attention_bwd_uses_atomic_dq(ba);
      e = atomic_small_run ? kernel_bwd(false, atomic_small) : nullptr;
      emu::optin_smem = optin;
      if (e) { std::printf("BAD %s: launch_attention_bwd (atomic dq, 99 KB): %s\n", c.name, e); return 1; }
    }
    const bool atomic_dkdv_same = !atomic || (atomic_run[1] == runs[0][1] && atomic_run[2] == runs[0][2] &&
                                              (!atomic_small_run || (atomic_small[1] == runs[0][1] && atomic_small[2] == runs[0][2])));
    const emu::BankTally bwd_banks = emu::BankTally::now() - bwd_start;
    const bool deterministic = quick || (runs[0][0] == runs[1][0] && runs[0][1] == runs[1][1] && runs[0][2] == runs[1][2]);
    Cmp cq, ck, cv, cqa;
    Tensor dq(c.B, c.Hq, c.Sq, D, c.layout_q), dk(c.B, c.Hkv, c.Sk, D, c.layout_kv);
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t i = 0; i < c.Sq; ++i)
          for (int64_t d = 0; d < D; ++d) {
            const int64_t o = dq.at(b, h, i, d), r = (b * c.Hq + h) * c.Sq + i;
            cq.add(get(t, runs[0][0][size_t(o)]), get(t, dq_cpu.data[size_t(o)]), m_dq[size_t(r * D + d)], n_dq[size_t(r * D + d)], eps);
            if (atomic)
              cqa.add(get(t, atomic_run[0][size_t(o)]), get(t, dq_cpu.data[size_t(o)]), m_dq[size_t(r * D + d)],
                      n_dq[size_t(r * D + d)], eps);
            if (atomic_small_run)
              cqa.add(get(t, atomic_small[0][size_t(o)]), get(t, dq_cpu.data[size_t(o)]), m_dq[size_t(r * D + d)],
                      n_dq[size_t(r * D + d)], eps);
          }
      for (int64_t h = 0; h < c.Hkv; ++h)
        for (int64_t j = 0; j < c.Sk; ++j)
          for (int64_t d = 0; d < D; ++d) {
            const int64_t o = dk.at(b, h, j, d), r = ((b * c.Hkv + h) * c.Sk + j) * D + d;
            ck.add(get(t, runs[0][1][size_t(o)]), get(t, dk_cpu.data[size_t(o)]), m_dk[size_t(r)], n_dk[size_t(r)], eps);
            cv.add(get(t, runs[0][2][size_t(o)]), get(t, dv_cpu.data[size_t(o)]), m_dv[size_t(r)], m_dv[size_t(r)], eps);
          }
    }
    // Both cp.async modes must give bit-identical results (the data is the same; only when it lands differs).
    bool same_modes = true;
    if (lazy) {
      first_out = out.data; first_lse = lse; first_dq = runs[0][0]; first_dk = runs[0][1]; first_dv = runs[0][2];
    } else {
      same_modes = first_out == out.data && first_dq == runs[0][0] && first_dk == runs[0][1] && first_dv == runs[0][2] &&
                   std::memcmp(first_lse.data(), lse.data(), lse.size() * sizeof(float)) == 0;
    }
    const bool conflict_free = fwd_banks.conflict_free() && bwd_banks.conflict_free();  // the swizzles' claim
    const bool ok = !co.bad && !lse_bad && !cq.bad && !ck.bad && !cv.bad && deterministic && same_modes && conflict_free &&
                    !cqa.bad && atomic_dkdv_same;
    char atomic_note[64] = "";
    if (atomic) std::snprintf(atomic_note, sizeof atomic_note, " (atomic dq %.2f%s)", cqa.units, atomic_small_run ? ", 2 kernels" : "");
    std::printf("%s %-34s %s %-5s out %.2f lse %.1e(%" PRId64 ") dq %.2f%s dk %.2f dv %.2f units%s%s%s%s\n", ok ? "OK " : "BAD",
                c.name, t == DType::kFloat16 ? "f16 " : "bf16", lazy ? "lazy" : "eager", co.units, lse_err, lse_bad,
                cq.units, atomic_note, ck.units, cv.units, deterministic ? "" : "  NOT DETERMINISTIC",
                same_modes ? "" : "  MODES DIFFER", atomic_dkdv_same ? "" : "  ATOMIC DK/DV DIFFER",
                (co.nan + cq.nan + ck.nan + cv.nan + cqa.nan) ? "  NaN" : "");
    std::printf("    fwd %s\n    bwd %s\n", fwd_banks.summary().c_str(), bwd_banks.summary().c_str());
    for (const Cmp* w : {&co, &cq, &ck, &cv, &cqa})
      if (w->units > 1)
        std::printf("    worst %s: kernel %.6g twin %.6g M %.3g\n",
                    w == &co ? "out" : w == &cq ? "dq" : w == &ck ? "dk" : w == &cv ? "dv" : "atomic dq", w->worst[0],
                    w->worst[1], w->worst[2]);
    if (!ok)
      std::printf("    over tolerance: out %" PRId64 " dq %" PRId64 " dk %" PRId64 " dv %" PRId64 " atomic dq %" PRId64
                  " (NaN %" PRId64 ")\n",
                  co.bad, cq.bad, ck.bad, cv.bad, cqa.bad, co.nan + cq.nan + ck.nan + cv.nan + cqa.nan);
    std::fflush(stdout);
    bad += !ok;
  }
  emu::cp_async_lazy = false;
  return bad;
}

int main(int argc, char** argv) {
  // quick: every third case, the backward once. steady: instead of the cases, one long
  // unmasked sequence per compiled head dim, for the counts mode's throughput model (the
  // loops' steady state, which the short cases' edge tiles hide); not part of the tests.
  const bool steady = argc > 1 && std::string(argv[1]) == "steady";
  const bool quick = steady || (argc > 1 && std::string(argv[1]) == "quick");
  emu::max_block_threads = 256;  // the kernels' __launch_bounds__
  emu::smem_fill = 0xff;         // never-written shared memory reads as NaN
  self_test_ldmatrix();
  self_test_mma<__half>();
  self_test_mma<__nv_bfloat16>();
  self_test_recipes<__half>();
  self_test_recipes<__nv_bfloat16>();
  self_test_cp_async();
  self_test_errors();
  std::printf(failures ? "self-test: %d FAILED\n" : "self-test: ok\n", failures);
  if (failures) return 1;
  std::printf("head dims compiled: %s\n", attention_compiled_head_dims());
  std::fflush(stdout);

  const DType H = DType::kFloat16, B = DType::kBFloat16;
  std::vector<Case> cases = {
      // B Hq Hkv  Sq   Sk   D    wl  wr  dtype lq lkv dlse
      {1, 2, 2, 70, 130, 64, -1, -1, H, 0, 0, false, "d64 Sq70 Sk130"},
      {1, 2, 2, 130, 70, 64, -1, 0, B, 0, 0, false, "d64 causal Sq130>Sk70"},
      {2, 2, 1, 70, 130, 64, -1, 0, H, 1, 2, true, "d64 causal Sq70<Sk130 gqa bshd dlse"},
      {1, 4, 2, 130, 130, 96, 20, 5, B, 2, 1, false, "d96 window(20,5) gqa"},
      {1, 3, 1, 71, 70, 80, -1, 0, H, 0, 0, true, "d80->96 causal gqa3 dlse Sq71"},  // odd B*Hq*Sq
      {1, 2, 2, 65, 129, 40, 0, 0, B, 1, 0, false, "d40->64 window(0,0) Sq65 Sk129"},
      {1, 1, 1, 200, 200, 64, 10, -1, H, 0, 0, false, "d64 window(10,-) skips tiles"},
      {1, 2, 1, 130, 1, 96, -1, 0, H, 0, 0, false, "d96 causal Sq130 Sk1 (empty CTAs)"},
      {1, 2, 2, 1, 130, 64, -1, -1, B, 0, 0, false, "d64 Sq1 Sk130"},
      {1, 2, 2, 100, 100, 96, 3, 200, B, 0, 2, true, "d96 window(3,200)"},
      {1, 2, 1, 33, 0, 8, -1, -1, H, 0, 0, false, "d8->64 Sk0 (no keys at all)"},
      // Run when MMM_EMULATE_ATTENTION_DIMS (run.sh) compiles these head dims.
      {1, 2, 2, 70, 130, 32, 5, -1, B, 0, 0, false, "d32 window(5,-)"},
      {1, 2, 1, 130, 70, 128, -1, 0, B, 1, 0, true, "d128 causal Sq130>Sk70 gqa bshd dlse"},
      {1, 2, 2, 70, 130, 128, 20, 5, H, 0, 2, false, "d128 window(20,5)"},
      {1, 1, 1, 70, 130, 120, -1, 0, H, 0, 0, false, "d120->128 causal"},
      {1, 2, 1, 70, 130, 192, -1, 0, H, 0, 0, true, "d192 causal Sq70<Sk130 gqa dlse"},
      {1, 1, 1, 130, 70, 176, 30, -1, B, 2, 1, false, "d176->192 window(30,-)"},
      {1, 2, 1, 130, 70, 256, -1, -1, B, 0, 2, false, "d256 Sq130 Sk70 gqa (dK/dV split)"},
      {1, 1, 1, 70, 130, 200, -1, 0, H, 1, 1, true, "d200->256 causal bshd dlse"},
  };
  // The head dim each case runs on: the smallest compiled one >= D (0: none, the case is skipped).
  std::vector<int64_t> compiled;
  for (const char* c = attention_compiled_head_dims(); *c;) {
    char* end;
    const long d = std::strtol(c, &end, 10);
    if (end == c) { ++c; continue; }
    compiled.push_back(d);
    c = end;
  }
  std::sort(compiled.begin(), compiled.end());
  auto padded = [&](int64_t D) {
    for (int64_t d : compiled)
      if (d >= D) return d;
    return int64_t(0);
  };
  std::vector<std::string> steady_names;
  if (steady) {
    cases.clear();
    steady_names.reserve(compiled.size());
    for (int64_t d : compiled) {
      steady_names.push_back("d" + std::to_string(d) + " Sq=Sk=512 (steady)");
      cases.push_back({1, 1, 1, 512, 512, d, -1, -1, H, 0, 0, false, steady_names.back().c_str()});
    }
  }
  int bad = 0, ran = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (quick && !steady && i % 3) continue;
    if (padded(cases[i].D) == 0) continue;
    bad += run_case(cases[i], quick);
    ++ran;
  }
  std::printf("%d cases run\n", ran);
  std::printf("max smem used %zu, cp.async copies %" PRIu64 "\n", emu::max_smem_used, emu::total_copies);
  std::printf(bad ? "FAILURES: %d\n" : "all ok %d\n", bad);
  return bad != 0;
}
