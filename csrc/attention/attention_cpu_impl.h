// fused_attention's CPU algorithm, compiled once per instruction set by attention_cpu.cpp
// (inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// FlashAttention on the CPU: the same tiling as the GPU kernels, with tiles in L1/L2 instead of
// shared memory.
//   forward   one task per (batch, query head, 64-row query tile): the Q tile is packed once
//             (fp32, pre-scaled by scale·log2 e so that exp2 needs no multiply), then 64-key
//             tiles of K (packed transposed) and V stream past it: S = Q·Kᵀ, masked, online
//             softmax (running max m and sum l per row), O = O·α + P·V. Key tiles that the
//             causal/window mask hides from every row of the tile are never visited. A thread
//             runs up to kFwdGroup neighbouring query tiles together so that each packed K/V tile
//             serves all of them.
//   backward  FlashAttention-2: P recomputed from Q, K and the saved lse; D = rowsum(dO ∘ O);
//             dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP − D), dK += dSᵀ·Q·scale, dQ += dS·K·scale.
//             dK/dV are owned by a (batch, kv head[, key tile]) task, dQ either by the same
//             (batch, kv head) task ("fused": dS is reused) or by a (batch, query head, query
//             tile) task that recomputes S and dP (more tasks when there are few kv heads). Each
//             output sums its terms in one fixed order either way: deterministic.
// Every product is one register-blocked micro-GEMM, C (6 x 2 vectors) += A·B, with A read
// through (row, k) strides so that transposed operands (Pᵀ, dSᵀ) need no copy.
// Arithmetic in fp32 (fp16/bf16/fp32 inputs) or fp64 (fp64 inputs, for gradcheck; natural exp
// instead of exp2). The bf16 forward on a CPU with AVX512_BF16 keeps Q, K, V as bf16 and runs
// both products on vdpbf16ps pairs (micro_pairs): S unscaled, then scaled; P rounded to bf16.

#include "core/cpu_rows.h"

namespace {

constexpr int kVecBytes = MMM_CPU_VECTOR_BYTES;

template <typename C> struct VecOf;
template <> struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  typedef int32_t itype __attribute__((vector_size(kVecBytes)));
};
template <> struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  typedef int64_t itype __attribute__((vector_size(kVecBytes)));
};

constexpr int64_t kBlockM = 64;  // query rows per tile
constexpr int64_t kBlockN = 64;  // keys per tile (a multiple of 2 vectors of every variant)
constexpr int kMicroRows = 6;    // micro-GEMM: 6 rows x 2 vectors = 12 accumulators (16 registers)
constexpr int64_t kFwdGroup = 4; // forward: query tiles that share each packed K/V tile

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Which keys each query row sees (params.h): j in [lo(i), hi(i)), both non-decreasing in i.
struct MaskGeom {
  int64_t sq, sk, shift, wl, wr;
  explicit MaskGeom(const AttentionFwdParams& p)
      : sq(p.seqlen_q), sk(p.seqlen_k), shift(p.seqlen_k - p.seqlen_q), wl(p.window_left), wr(p.window_right) {}
  int64_t lo(int64_t i) const { return wl < 0 ? 0 : std::max<int64_t>(0, i + shift - wl); }
  int64_t hi(int64_t i) const { return wr < 0 ? sk : std::max<int64_t>(0, std::min<int64_t>(sk, i + shift + wr + 1)); }
  // Rows [first, last) that see at least one key of [j0, j1) (exact: lo/hi are monotone and a
  // row with lo(i) < j1 and hi(i) > j0 cannot be empty).
  int64_t row_first(int64_t j0) const { return wr < 0 ? 0 : std::clamp<int64_t>(j0 - shift - wr, 0, sq); }
  int64_t row_last(int64_t j1) const { return wl < 0 ? sq : std::clamp<int64_t>(j1 - shift + wl, 0, sq); }
};

template <typename T, typename C>
struct Attention {
  using V = typename VecOf<C>::type;
  using VI = typename VecOf<C>::itype;
  static constexpr int L = kVecBytes / int(sizeof(C));
  static constexpr bool kF32 = std::is_same_v<C, float>;
  // fp32 works in base 2 (exp2, scale·log2 e folded into Q); fp64 in base e.
  static constexpr C kLogBase = kF32 ? C(1.4426950408889634) : C(1);
  static constexpr C kInf = std::numeric_limits<C>::infinity();

  // ---- vector helpers ----------------------------------------------------------------------
  static V vload(const C* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
  static void vstore(C* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V vsplat(C x) { return x - V{}; }  // x - 0 == x exactly (not so 0 + x: -0), so it folds
  static C hsum(V v) {  // fixed order
    C s = v[0];
    for (int l = 1; l < L; ++l) s += v[l];
    return s;
  }
  static C hmax(V v) {  // NaN if any lane is NaN; a butterfly of lane swaps, log2(L) steps
#pragma GCC unroll 4
    for (int w = L / 2; w >= 1; w /= 2) {
      const V o = __builtin_shuffle(v, iota() ^ w);
      v = (o > v) | (o != o) ? o : v;
    }
    return v[0];
  }
  static VI iota() {
    VI v;
    for (int l = 0; l < L; ++l) v[l] = l;
    return v;
  }

  // exp in the working base, elementwise; exactly 0 for -inf (masked scores), NaN for NaN.
  static V vexp(V x) {
    if constexpr (kF32) {
      // 2^x = 2^n · 2^f, n = round(x), f in [-0.5, 0.5]; 2^f by its Taylor series to degree 7
      // (truncation error < 1e-8, below fp32 rounding). Below -125 the result is flushed to 0
      // (terms < 2^-125 of a sum whose largest term is 1).
      constexpr double ln2 = 0.693147180559945309417;
      constexpr float c1 = float(ln2), c2 = float(ln2 * ln2 / 2), c3 = float(ln2 * ln2 * ln2 / 6),
                      c4 = float(ln2 * ln2 * ln2 * ln2 / 24), c5 = float(ln2 * ln2 * ln2 * ln2 * ln2 / 120),
                      c6 = float(ln2 * ln2 * ln2 * ln2 * ln2 * ln2 / 720),
                      c7 = float(ln2 * ln2 * ln2 * ln2 * ln2 * ln2 * ln2 / 5040);
      const V lo = vsplat(-125.f), hi = vsplat(126.f);
      V xc = x < lo ? lo : x;
      xc = xc > hi ? hi : xc;
      const V magic = vsplat(12582912.f);  // 1.5 · 2^23: x + magic rounds x to an integer
      const V t = xc + magic;
      const V nf = t - magic;
      const V f = xc - nf;
      const VI n = (VI)t - (VI)magic;
      V q = vsplat(c7);
      q = q * f + c6;
      q = q * f + c5;
      q = q * f + c4;
      q = q * f + c3;
      q = q * f + c2;
      q = q * f + c1;
      q = q * f + 1.f;
      const V r = (V)((VI)q + (n << 23));
      return x < lo ? V{} : (x == x ? r : x);
    } else {
      V r;
      for (int l = 0; l < L; ++l) r[l] = std::exp(x[l]);
      return r;
    }
  }
  static C sexp(C x) { return kF32 ? std::exp2(x) : std::exp(x); }
  static C slog(C x) { return kF32 ? std::log2(x) : std::log(x); }

  // ---- micro-GEMM ----------------------------------------------------------------------------
  // C[R x NV·L] (=|+=) A[R x K] · B[K x NV·L]; A(r, k) = a[r·ars + k·aks], B and C row-major.
  template <int R, int NV, bool kAcc>
  static void micro(int64_t K, const C* __restrict a, int64_t ars, int64_t aks, const C* __restrict b,
                    int64_t ldb, C* __restrict c, int64_t ldc) {
    V acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = kAcc ? vload(c + r * ldc + v * L) : V{};
    for (int64_t k = 0; k < K; ++k) {
      V bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = vload(b + k * ldb + v * L);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V av = vsplat(a[r * ars + k * aks]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) vstore(c + r * ldc + v * L, acc[r][v]);
  }

  template <int NV, bool kAcc>
  static void gemm_panel(int64_t M, int64_t K, const C* a, int64_t ars, int64_t aks, const C* b, int64_t ldb,
                         C* c, int64_t ldc) {
    int64_t m = 0;
    for (; m + kMicroRows <= M; m += kMicroRows)
      micro<kMicroRows, NV, kAcc>(K, a + m * ars, ars, aks, b, ldb, c + m * ldc, ldc);
    const C* am = a + m * ars;
    C* cm = c + m * ldc;
    switch (M - m) {
      case 5: micro<5, NV, kAcc>(K, am, ars, aks, b, ldb, cm, ldc); break;
      case 4: micro<4, NV, kAcc>(K, am, ars, aks, b, ldb, cm, ldc); break;
      case 3: micro<3, NV, kAcc>(K, am, ars, aks, b, ldb, cm, ldc); break;
      case 2: micro<2, NV, kAcc>(K, am, ars, aks, b, ldb, cm, ldc); break;
      case 1: micro<1, NV, kAcc>(K, am, ars, aks, b, ldb, cm, ldc); break;
      default: break;
    }
  }

  // C[M x N] (=|+=) A[M x K] · B[K x N], N a multiple of L. Each element of C is one FMA chain
  // over k in order, whatever M and the row blocking: the schedules above rely on that.
  template <bool kAcc>
  static void gemm(int64_t M, int64_t N, int64_t K, const C* a, int64_t ars, int64_t aks, const C* b, int64_t ldb,
                   C* c, int64_t ldc) {
    int64_t n = 0;
    for (; n + 2 * L <= N; n += 2 * L) gemm_panel<2, kAcc>(M, K, a, ars, aks, b + n, ldb, c + n, ldc);
    if (n < N) gemm_panel<1, kAcc>(M, K, a, ars, aks, b + n, ldb, c + n, ldc);
  }

#if defined(MMM_CPU_AVX512)
  // ---- bf16 pairs (CPUs with AVX512_BF16, the forward of bf16 inputs) -------------------------
  // The same products on bf16 operands, a pair of reduction elements per vdpbf16ps (twice an fp32
  // FMA's work): A's pair q of row r is the two uint16 at a + r·ars + 2q, B's pair-row q holds
  // columns as [column][2] at b + q·ldb. Sums in fp32, over q in order.
  static constexpr bool kBf16 = std::is_same_v<T, BFloat16>;
  static bool use_pairs() { return kBf16 && cpu_has_avx512_bf16(); }

  template <int R, int NV, bool kAcc>
  __attribute__((target("avx512bf16,avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
  static void micro_pairs(int64_t Q, const uint16_t* __restrict a, int64_t ars, const uint16_t* __restrict b,
                          int64_t ldb, float* __restrict c, int64_t ldc) {
    __m512 acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = kAcc ? _mm512_loadu_ps(c + r * ldc + v * 16) : _mm512_setzero_ps();
    for (int64_t q = 0; q < Q; ++q) {
      __m512i bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + q * ldb + v * 32);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int pair;
        std::memcpy(&pair, a + r * ars + 2 * q, sizeof pair);
        const __m512i av = _mm512_set1_epi32(pair);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + v * 16, acc[r][v]);
  }

  template <int NV, bool kAcc>
  static void gemm_pairs_panel(int64_t M, int64_t Q, const uint16_t* a, int64_t ars, const uint16_t* b, int64_t ldb,
                               float* c, int64_t ldc) {
    int64_t m = 0;
    for (; m + kMicroRows <= M; m += kMicroRows)
      micro_pairs<kMicroRows, NV, kAcc>(Q, a + m * ars, ars, b, ldb, c + m * ldc, ldc);
    const uint16_t* am = a + m * ars;
    float* cm = c + m * ldc;
    switch (M - m) {
      case 5: micro_pairs<5, NV, kAcc>(Q, am, ars, b, ldb, cm, ldc); break;
      case 4: micro_pairs<4, NV, kAcc>(Q, am, ars, b, ldb, cm, ldc); break;
      case 3: micro_pairs<3, NV, kAcc>(Q, am, ars, b, ldb, cm, ldc); break;
      case 2: micro_pairs<2, NV, kAcc>(Q, am, ars, b, ldb, cm, ldc); break;
      case 1: micro_pairs<1, NV, kAcc>(Q, am, ars, b, ldb, cm, ldc); break;
      default: break;
    }
  }

  // C[M x N] (=|+=) A[M x 2Q] · B[2Q x N], N a multiple of 16 (L).
  template <bool kAcc>
  static void gemm_pairs(int64_t M, int64_t N, int64_t Q, const uint16_t* a, int64_t ars, const uint16_t* b,
                         int64_t ldb, float* c, int64_t ldc) {
    int64_t n = 0;
    for (; n + 32 <= N; n += 32) gemm_pairs_panel<2, kAcc>(M, Q, a, ars, b + 2 * n, ldb, c + n, ldc);
    if (n < N) gemm_pairs_panel<1, kAcc>(M, Q, a, ars, b + 2 * n, ldb, c + n, ldc);
  }

  // Rows [j0, j0 + n) of a (seq, D) bf16 operand as B pair-rows for S = Q·Kᵀ, pairs over D:
  // dst[(x / 2) · 2kBlockN + 2j + x % 2] = row j's element x, zero for j in [n, cols) and x >= D.
  static void pack_pairs_transposed(const T* base, int64_t row_stride, int64_t j0, int64_t n, int64_t cols,
                                    int64_t D, uint16_t* dst) {
    const int64_t Dq = round_up(D, 2);
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t x = 0; x < Dq; ++x)
        dst[x / 2 * 2 * kBlockN + 2 * j + x % 2] = j < n && x < D ? base[(j0 + j) * row_stride + x].bits : 0;
  }
  // Rows [j0, j0 + n) of a (seq, D) bf16 operand as B pair-rows for O += P·V, pairs over rows:
  // dst[(j / 2) · 2ld + 2x + j % 2] = row j's element x, zero for x in [D, ld) and j in [n, n + n % 2).
  static void pack_pairs_rows(const T* base, int64_t row_stride, int64_t j0, int64_t n, int64_t D, int64_t ld,
                              uint16_t* dst) {
    for (int64_t j = 0; j < round_up(n, 2); ++j) {
      uint16_t* d = dst + j / 2 * 2 * ld + j % 2;
      for (int64_t x = 0; x < ld; ++x) d[2 * x] = j < n && x < D ? base[(j0 + j) * row_stride + x].bits : 0;
    }
  }
  // 16 floats as bf16 bits at dst: round to nearest even, a NaN stays a (quiet) NaN.
  static void store_bf16(uint16_t* dst, V v) {
    typedef uint32_t VU __attribute__((vector_size(kVecBytes)));
    typedef uint16_t VH __attribute__((vector_size(kVecBytes / 2)));
    const VU u = (VU)v;
    const VU rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const VH bits = __builtin_convertvector((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded, VH);
    std::memcpy(dst, &bits, sizeof bits);
  }
  // out (M x np, ld kBlockN) = A·B·mul over D = round_up(D, 2) / 2 pairs: A rows of Dq bits (Q or
  // dO), B as pack_pairs_transposed left it (Kᵀ or Vᵀ). The forward's and the backward's scores
  // come from here alike, so the backward's P is the forward's bit for bit.
  static void scores_pairs(int64_t M, int64_t np, int64_t Dq, const uint16_t* a, const uint16_t* b, C mul, C* out) {
    gemm_pairs<false>(M, np, Dq / 2, a, Dq, b, 2 * kBlockN, out, kBlockN);
    if (mul == C(1)) return;
    const V vm = vsplat(mul);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < np; c += L) vstore(out + r * kBlockN + c, vload(out + r * kBlockN + c) * vm);
  }
#endif

  // ---- packing ---------------------------------------------------------------------------------
  // Rows [r0, r0 + rows) of a (seq, D) operand into dst (rows x ld, zero beyond D), times mul.
  static void pack_rows(const T* base, int64_t row_stride, int64_t r0, int64_t rows, int64_t D, int64_t ld,
                        C mul, C* dst) {
    for (int64_t r = 0; r < rows; ++r) {
      C* d = dst + r * ld;
      load_row(base + (r0 + r) * row_stride, d, D);
      if (mul != C(1))
        for (int64_t x = 0; x < D; ++x) d[x] *= mul;
      for (int64_t x = D; x < ld; ++x) d[x] = C(0);
    }
  }
  // Rows [j0, j0 + n) of a (seq, D) operand transposed into dst (D x kBlockN); columns
  // [n, round_up(n, L)) zeroed.
  static void pack_transposed(const T* base, int64_t row_stride, int64_t j0, int64_t n, int64_t D, C* tmp,
                              C* dst) {
    for (int64_t j = 0; j < n; ++j) {
      load_row(base + (j0 + j) * row_stride, tmp, D);
      for (int64_t x = 0; x < D; ++x) dst[x * kBlockN + j] = tmp[x];
    }
    const int64_t np = round_up(n, L);
    for (int64_t x = 0; x < D; ++x)
      for (int64_t j = n; j < np; ++j) dst[x * kBlockN + j] = C(0);
  }

  static uint16_t bits_of(T v) {  // a bf16's bits (only bf16 inputs take the pair path)
    if constexpr (std::is_same_v<T, BFloat16>) return v.bits;
    else return 0;
  }

  static const T* head_ptr(const void* base, const AttentionStrides& s, int64_t b, int64_t h) {
    return static_cast<const T*>(base) + b * s.batch + h * s.head;
  }
  static T* head_ptr(void* base, const AttentionStrides& s, int64_t b, int64_t h) {
    return static_cast<T*>(base) + b * s.batch + h * s.head;
  }

  // Masks row s[0, np) to the valid columns [vlo, vhi) (-inf elsewhere); returns the row max.
  static C mask_row_max(C* s, int64_t np, int64_t vlo, int64_t vhi) {
    if (vlo <= 0 && vhi >= np) {  // nothing to mask (most tiles without a causal/window edge)
      V mx = vsplat(-kInf);
      for (int64_t c = 0; c < np; c += L) {
        const V x = vload(s + c);
        mx = (x > mx) | (x != x) ? x : mx;
      }
      return hmax(mx);
    }
    using IE = std::conditional_t<kF32, int32_t, int64_t>;
    const IE lo = IE(std::clamp<int64_t>(vlo, 0, np)), hi = IE(std::clamp<int64_t>(vhi, 0, np));
    const VI idx0 = iota();
    const V ninf = vsplat(-kInf);
    V mx = ninf;
    for (int64_t c = 0; c < np; c += L) {
      const VI idx = idx0 + IE(c);
      V x = vload(s + c);
      x = ((idx >= lo) & (idx < hi)) ? x : ninf;
      vstore(s + c, x);
      mx = (x > mx) | (x != x) ? x : mx;  // a NaN score (NaN input) sticks, to reach the output
    }
    return hmax(mx);
  }

  // ---- forward ---------------------------------------------------------------------------------
  static int64_t fwd_tiles(const AttentionFwdParams& p) { return ceil_div(p.seqlen_q, kBlockM); }

  // One query tile of the forward: its packed Q, running output, max and sum.
  struct FwdTile {
    C *Qs, *O, *m, *l;
    uint16_t* Qb;                 // bf16 pairs: Q's bits (M, round_up(D, 2)), unscaled
    int64_t i0, M, jt_lo, jt_hi;  // rows [i0, i0 + M) visit key tiles [jt_lo, jt_hi)
  };

  // The forward's operands as bf16 pairs (use_pairs()): K as Kᵀ pair-rows, V as pair-rows, P's
  // bits, the query tiles' Q; Q·Kᵀ is scaled after the product instead of through Q.
  struct FwdPairs {
    uint16_t *Kp, *Vp, *Pb, *Qb;
    C qscale;
  };

  // Folds key tile [j0, j0 + n) (packed in Kt, Vp, or pairs) into one query tile's running state.
  static void fwd_step(const MaskGeom& mg, int64_t D, int64_t Dp, int64_t j0, int64_t n, const C* Kt,
                       const C* Vp, C* S, const FwdTile& q, const FwdPairs* pairs) {
    const int64_t np = round_up(n, L);
#if defined(MMM_CPU_AVX512)
    if constexpr (kBf16) {
      if (pairs) scores_pairs(q.M, np, round_up(D, 2), q.Qb, pairs->Kp, pairs->qscale, S);  // S = Q·Kᵀ (scaled)
    }
    if (!pairs)
#endif
      gemm<false>(q.M, np, D, q.Qs, D, 1, Kt, kBlockN, S, kBlockN);  // S = Q·Kᵀ (scaled)
    for (int64_t r = 0; r < q.M; ++r) {
      C* s = S + r * kBlockN;
      const int64_t i = q.i0 + r;
      const int64_t vlo = std::max<int64_t>(mg.lo(i) - j0, 0), vhi = std::min<int64_t>(mg.hi(i) - j0, n);
      const C mx = mask_row_max(s, np, vlo, vhi);
      const C m_old = q.m[r];
      const C m_new = mx != mx ? mx : std::max(m_old, mx);
      uint16_t* pb = nullptr;  // this row of P as bf16 (pairs)
#if defined(MMM_CPU_AVX512)
      if constexpr (kBf16)
        if (pairs) pb = pairs->Pb + r * kBlockN;
#endif
      if (m_new == -kInf) {  // nothing visible to this row yet: P = 0, O and l stay 0
        std::fill(s, s + np, C(0));
        if (pb) std::fill(pb, pb + np, uint16_t(0));
        continue;
      }
      const V vm = vsplat(m_new);
      V sum = V{};
      for (int64_t c = 0; c < np; c += L) {
        const V e = vexp(vload(s + c) - vm);
        vstore(s + c, e);
#if defined(MMM_CPU_AVX512)
        if constexpr (kBf16)
          if (pb) store_bf16(pb + c, e);
#endif
        sum += e;
      }
      const C alpha = sexp(m_old - m_new);  // 0 when m was -inf
      q.l[r] = q.l[r] * alpha + hsum(sum);
      q.m[r] = m_new;
      if (alpha != C(1)) {
        C* o = q.O + r * Dp;
        const V va = vsplat(alpha);
        for (int64_t c = 0; c < Dp; c += L) vstore(o + c, vload(o + c) * va);
      }
    }
#if defined(MMM_CPU_AVX512)
    if constexpr (kBf16) {
      if (pairs) {  // O += P·V, P rounded to bf16 as the CUDA kernels do
        gemm_pairs<true>(q.M, Dp, round_up(n, 2) / 2, pairs->Pb, kBlockN, pairs->Vp, 2 * Dp, q.O, Dp);
        return;
      }
    }
#endif
    gemm<true>(q.M, Dp, n, S, kBlockN, 1, Vp, Dp, q.O, Dp);  // O += P·V
  }

  static void fwd(const AttentionFwdParams& p, int64_t t0, int64_t t1) {
    const int64_t D = p.head_dim, Dp = round_up(D, L), tiles = fwd_tiles(p);
    const int64_t group = p.heads_q / p.heads_kv;
    const MaskGeom mg(p);
    const int64_t per_tile = kBlockM * D + kBlockM * Dp + 2 * kBlockM;
    std::vector<C> buf(D * kBlockN + kBlockN * Dp + kBlockM * kBlockN + Dp + kFwdGroup * per_tile);
    C* const Kt = buf.data();            // (D, kBlockN)
    C* const Vp = Kt + D * kBlockN;      // (kBlockN, Dp)
    C* const S = Vp + kBlockN * Dp;      // (kBlockM, kBlockN): scores, then P
    C* const tmp = S + kBlockM * kBlockN;  // (Dp,)
    C* const tiles_buf = tmp + Dp;       // kFwdGroup x [Qs (kBlockM, D), O (kBlockM, Dp), m, l]
    const C qscale = C(p.scale) * kLogBase;
    // bf16 pairs: Kᵀ (Dq/2 pair-rows of kBlockN), V (kBlockN/2 pair-rows of Dp), P, each tile's Q.
    FwdPairs pairs_buf{};
    const FwdPairs* pairs = nullptr;
    std::vector<uint16_t> pbuf;
    const int64_t Dq = round_up(D, 2);
#if defined(MMM_CPU_AVX512)
    if (use_pairs()) {
      pbuf.resize(size_t(Dq * kBlockN + kBlockN * Dp + kBlockM * kBlockN + kFwdGroup * kBlockM * Dq));
      pairs_buf.Kp = pbuf.data();
      pairs_buf.Vp = pairs_buf.Kp + Dq * kBlockN;
      pairs_buf.Pb = pairs_buf.Vp + kBlockN * Dp;
      pairs_buf.Qb = pairs_buf.Pb + kBlockM * kBlockN;
      pairs_buf.qscale = qscale;
      pairs = &pairs_buf;
    }
#endif

    // A thread's tasks are consecutive, so most of its query tiles share a head with their
    // neighbours: up to kFwdGroup of them go through the key tiles together, and each K/V tile is
    // converted and transposed once per group instead of once per query tile. Each query tile
    // still visits its key tiles in ascending order: the result does not depend on the grouping.
    FwdTile q[kFwdGroup];
    for (int64_t t = t0; t < t1;) {
      const int64_t bh = t / tiles, b = bh / p.heads_q, h = bh % p.heads_q, hk = h / group;
      const int64_t t_end = std::min({t1, t + kFwdGroup, (bh + 1) * tiles});
      const int64_t G = t_end - t;
      const T* qh = head_ptr(p.q, p.q_s, b, h);
      const T* k = head_ptr(p.k, p.k_s, b, hk);
      const T* v = head_ptr(p.v, p.v_s, b, hk);
      int64_t jt_lo = std::numeric_limits<int64_t>::max(), jt_hi = 0;
      for (int64_t g = 0; g < G; ++g) {
        FwdTile& x = q[g];
        x.Qs = tiles_buf + g * per_tile;
        x.O = x.Qs + kBlockM * D;
        x.m = x.O + kBlockM * Dp;
        x.l = x.m + kBlockM;
        x.i0 = (t + g - bh * tiles) * kBlockM;
        x.M = std::min(p.seqlen_q, x.i0 + kBlockM) - x.i0;
        x.jt_lo = mg.lo(x.i0) / kBlockN;
        x.jt_hi = ceil_div(mg.hi(x.i0 + x.M - 1), kBlockN);
        jt_lo = std::min(jt_lo, x.jt_lo);
        jt_hi = std::max(jt_hi, x.jt_hi);
        if (pairs) {
          x.Qb = pairs->Qb + g * kBlockM * Dq;
          for (int64_t r = 0; r < x.M; ++r) {
            const T* row = qh + (x.i0 + r) * p.q_s.row;
            for (int64_t c = 0; c < Dq; ++c) x.Qb[r * Dq + c] = c < D ? bits_of(row[c]) : uint16_t(0);
          }
        } else {
          x.Qb = nullptr;
          pack_rows(qh, p.q_s.row, x.i0, x.M, D, D, qscale, x.Qs);
        }
        std::fill(x.O, x.O + x.M * Dp, C(0));
        std::fill(x.m, x.m + x.M, -kInf);
        std::fill(x.l, x.l + x.M, C(0));
      }

      for (int64_t jt = jt_lo; jt < jt_hi; ++jt) {
        const int64_t j0 = jt * kBlockN, n = std::min(p.seqlen_k, j0 + kBlockN) - j0;
#if defined(MMM_CPU_AVX512)
        if constexpr (kBf16) {
          if (pairs) {
            pack_pairs_transposed(k, p.k_s.row, j0, n, round_up(n, L), D, pairs->Kp);
            pack_pairs_rows(v, p.v_s.row, j0, n, D, Dp, pairs->Vp);
          }
        }
#endif
        if (!pairs) {
          pack_transposed(k, p.k_s.row, j0, n, D, tmp, Kt);
          pack_rows(v, p.v_s.row, j0, n, D, Dp, C(1), Vp);
        }
        for (int64_t g = 0; g < G; ++g)
          if (jt >= q[g].jt_lo && jt < q[g].jt_hi) fwd_step(mg, D, Dp, j0, n, Kt, Vp, S, q[g], pairs);
      }

      T* out = head_ptr(p.out, p.o_s, b, h);
      for (int64_t g = 0; g < G; ++g) {
        const FwdTile& x = q[g];
        const int64_t lse_off = (b * p.heads_q + h) * p.seqlen_q + x.i0;
        for (int64_t r = 0; r < x.M; ++r) {
          const bool any = !(x.l[r] <= C(0));  // a row that saw a key (or a NaN)
          const C inv = any ? C(1) / x.l[r] : C(0);
          C* o = x.O + r * Dp;
          for (int64_t c = 0; c < Dp; ++c) o[c] *= inv;
          store_row(o, out + (x.i0 + r) * p.o_s.row, D);
          const C lse = any ? (x.m[r] + slog(x.l[r])) / kLogBase : kInf;
          if constexpr (kF32) p.lse[lse_off + r] = lse;
          else p.lse_f64[lse_off + r] = lse;
        }
      }
      t = t_end;
    }
  }

  // ---- backward --------------------------------------------------------------------------------
  // Workspace: [Dvec: B·Hq·Sq][fused: dq accumulator (B, Hq, Sq, Dp)] in C.
  static C* dvec_ws(const AttentionBwdParams& p) { return static_cast<C*>(p.workspace); }
  static C* dq_ws(const AttentionBwdParams& p) {
    const AttentionFwdParams& f = p.fwd;
    return dvec_ws(p) + f.batch * f.heads_q * f.seqlen_q;
  }
  static size_t workspace_bytes(const AttentionBwdParams& p, bool fused) {
    const AttentionFwdParams& f = p.fwd;
    const int64_t rows = f.batch * f.heads_q * f.seqlen_q;
    return size_t(rows) * sizeof(C) * size_t(1 + (fused ? round_up(f.head_dim, L) : 0));
  }

  static const C* lse_ptr(const AttentionBwdParams& p) {
    if constexpr (kF32) return p.fwd.lse;
    else return p.fwd.lse_f64;
  }

  // Phase 0: Dvec[row] = rowsum(dO ∘ O) − dlse, per (batch, head, query tile).
  static void bwd_rowsum(const AttentionBwdParams& p, int64_t t0, int64_t t1) {
    const AttentionFwdParams& f = p.fwd;
    const int64_t D = f.head_dim, tiles = fwd_tiles(f);
    std::vector<C> a(D), o(D);
    C* const dvec = dvec_ws(p);
    const C* dlse = static_cast<const C*>(p.dlse);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qt = t % tiles, bh = t / tiles, b = bh / f.heads_q, h = bh % f.heads_q;
      const int64_t i0 = qt * kBlockM, i1 = std::min(f.seqlen_q, i0 + kBlockM);
      const T* dout = head_ptr(p.dout, p.do_s, b, h);
      const T* out = head_ptr(f.out, f.o_s, b, h);
      for (int64_t i = i0; i < i1; ++i) {
        load_row(dout + i * p.do_s.row, a.data(), D);
        load_row(out + i * f.o_s.row, o.data(), D);
        C s = lane_sum<C>(D, [&](int64_t x) { return a[x] * o[x]; });
        const int64_t row = bh * f.seqlen_q + i;
        if (dlse) s -= dlse[row];
        dvec[row] = s;
      }
    }
  }

  // Per-thread scratch of the backward.
  struct BwdBuf {
    std::vector<C> buf;
    C *Kt, *Vt, *Kr, *dKa, *dVa, *Qs, *dO, *S, *dP, *dQl, *lse, *dv, *tmp;
    // bf16 pairs (use_pairs()): S and dP as the forward computes S, from Kᵀ, Vᵀ, Q and dO's bits
    // (Kt and Vt unused); dV, dK and dQ stay on fp32.
    bool pairs = false;
    std::vector<uint16_t> pbuf;
    uint16_t *Kp = nullptr, *Vp = nullptr, *Qb = nullptr, *dOb = nullptr;
    BwdBuf(int64_t D, int64_t Dp, bool use_pairs) : pairs(use_pairs) {
      if (pairs) {
        const int64_t Dq = round_up(D, 2);
        pbuf.resize(size_t(2 * Dq * kBlockN + 2 * kBlockM * Dq));
        Kp = pbuf.data();           // (Dq / 2 pair-rows, 2 kBlockN)
        Vp = Kp + Dq * kBlockN;     // (Dq / 2 pair-rows, 2 kBlockN)
        Qb = Vp + Dq * kBlockN;     // (kBlockM, Dq)
        dOb = Qb + kBlockM * Dq;    // (kBlockM, Dq)
      }
      buf.resize(2 * D * kBlockN + 3 * kBlockN * Dp + 3 * kBlockM * Dp + 2 * kBlockM * kBlockN + 2 * kBlockM + Dp);
      Kt = buf.data();               // (D, kBlockN)   Kᵀ, for S = Q·Kᵀ
      Vt = Kt + D * kBlockN;         // (D, kBlockN)   Vᵀ, for dP = dO·Vᵀ
      Kr = Vt + D * kBlockN;         // (kBlockN, Dp)  K, for dQ += dS·K
      dKa = Kr + kBlockN * Dp;       // (kBlockN, Dp)
      dVa = dKa + kBlockN * Dp;      // (kBlockN, Dp)
      Qs = dVa + kBlockN * Dp;       // (kBlockM, Dp)  Q · scale · log base
      dO = Qs + kBlockM * Dp;        // (kBlockM, Dp)
      dQl = dO + kBlockM * Dp;       // (kBlockM, Dp)
      S = dQl + kBlockM * Dp;        // (kBlockM, kBlockN) scores, then P
      dP = S + kBlockM * kBlockN;    // (kBlockM, kBlockN) dP, then dS
      lse = dP + kBlockM * kBlockN;  // (kBlockM,) lse in the working base
      dv = lse + kBlockM;            // (kBlockM,) Dvec
      tmp = dv + kBlockM;            // (Dp,)
    }
  };

  static void pack_kv_tile(const AttentionBwdParams& p, int64_t b, int64_t hk, int64_t j0, int64_t n, BwdBuf& w) {
    const AttentionFwdParams& f = p.fwd;
    const int64_t D = f.head_dim, Dp = round_up(D, L);
    const T* k = head_ptr(f.k, f.k_s, b, hk);
    const T* v = head_ptr(f.v, f.v_s, b, hk);
#if defined(MMM_CPU_AVX512)
    if constexpr (kBf16) {
      if (w.pairs) {
        pack_pairs_transposed(k, f.k_s.row, j0, n, round_up(n, L), D, w.Kp);
        pack_pairs_transposed(v, f.v_s.row, j0, n, round_up(n, L), D, w.Vp);
      }
    }
#endif
    if (!w.pairs) {
      pack_transposed(k, f.k_s.row, j0, n, D, w.tmp, w.Kt);
      pack_transposed(v, f.v_s.row, j0, n, D, w.tmp, w.Vt);
    }
    pack_rows(k, f.k_s.row, j0, n, D, Dp, C(1), w.Kr);
  }

  static void pack_q_tile(const AttentionBwdParams& p, int64_t b, int64_t h, int64_t i0, int64_t M, BwdBuf& w) {
    const AttentionFwdParams& f = p.fwd;
    const int64_t D = f.head_dim, Dp = round_up(D, L);
    pack_rows(head_ptr(f.q, f.q_s, b, h), f.q_s.row, i0, M, D, Dp, C(f.scale) * kLogBase, w.Qs);
    pack_rows(head_ptr(p.dout, p.do_s, b, h), p.do_s.row, i0, M, D, Dp, C(1), w.dO);
    if (w.pairs) {
      const int64_t Dq = round_up(D, 2);
      const T* q = head_ptr(f.q, f.q_s, b, h);
      const T* dout = head_ptr(p.dout, p.do_s, b, h);
      for (int64_t r = 0; r < M; ++r)
        for (int64_t c = 0; c < Dq; ++c) {
          w.Qb[r * Dq + c] = c < D ? bits_of(q[(i0 + r) * f.q_s.row + c]) : uint16_t(0);
          w.dOb[r * Dq + c] = c < D ? bits_of(dout[(i0 + r) * p.do_s.row + c]) : uint16_t(0);
        }
    }
    const int64_t row0 = (b * f.heads_q + h) * f.seqlen_q + i0;
    const C* lse = lse_ptr(p);
    for (int64_t r = 0; r < M; ++r) {
      w.lse[r] = lse[row0 + r] * kLogBase;  // +inf (no key) stays +inf: P = 0
      w.dv[r] = dvec_ws(p)[row0 + r];
    }
  }

  // S, P and dS of the tile pair (rows [i0, i0 + M) x keys [j0, j0 + n)): P in w.S, dS in w.dP.
  static void tile_ds(const AttentionBwdParams& p, const MaskGeom& mg, int64_t i0, int64_t M, int64_t j0, int64_t n,
                      BwdBuf& w) {
    const int64_t D = p.fwd.head_dim, Dp = round_up(D, L), np = round_up(n, L);
#if defined(MMM_CPU_AVX512)
    if constexpr (kBf16) {
      if (w.pairs) {
        const int64_t Dq = round_up(D, 2);
        scores_pairs(M, np, Dq, w.Qb, w.Kp, C(p.fwd.scale) * kLogBase, w.S);  // S = Q·Kᵀ (scaled)
        scores_pairs(M, np, Dq, w.dOb, w.Vp, C(1), w.dP);                     // dP = dO·Vᵀ
      }
    }
#endif
    if (!w.pairs) {
      gemm<false>(M, np, D, w.Qs, Dp, 1, w.Kt, kBlockN, w.S, kBlockN);   // S = Q·Kᵀ
      gemm<false>(M, np, D, w.dO, Dp, 1, w.Vt, kBlockN, w.dP, kBlockN);  // dP = dO·Vᵀ
    }
    for (int64_t r = 0; r < M; ++r) {
      const int64_t i = i0 + r;
      const int64_t vlo = std::max<int64_t>(mg.lo(i) - j0, 0), vhi = std::min<int64_t>(mg.hi(i) - j0, n);
      C* s = w.S + r * kBlockN;
      C* dp = w.dP + r * kBlockN;
      if (vlo > 0 || vhi < np) mask_row_max(s, np, vlo, vhi);
      const V vl = vsplat(w.lse[r]), vd = vsplat(w.dv[r]);
      for (int64_t c = 0; c < np; c += L) {
        const V pr = vexp(vload(s + c) - vl);  // masked: exp(-inf) = 0
        vstore(s + c, pr);
        vstore(dp + c, pr * (vload(dp + c) - vd));
      }
    }
  }

  // Phase 1: dK, dV of key tiles [kt0, kt1) of (b, hk); with dq_acc (fused), also dQ's terms.
  static void bwd_kv(const AttentionBwdParams& p, int64_t b, int64_t hk, int64_t kt0, int64_t kt1, C* dq_acc,
                     BwdBuf& w) {
    const AttentionFwdParams& f = p.fwd;
    const int64_t D = f.head_dim, Dp = round_up(D, L), group = f.heads_q / f.heads_kv;
    const MaskGeom mg(f);
    T* dk = head_ptr(p.dk, p.dk_s, b, hk);
    T* dv = head_ptr(p.dv, p.dv_s, b, hk);
    for (int64_t kt = kt0; kt < kt1; ++kt) {
      const int64_t j0 = kt * kBlockN, n = std::min(f.seqlen_k, j0 + kBlockN) - j0;
      pack_kv_tile(p, b, hk, j0, n, w);
      std::fill(w.dKa, w.dKa + n * Dp, C(0));
      std::fill(w.dVa, w.dVa + n * Dp, C(0));
      const int64_t r_first = mg.row_first(j0), r_last = mg.row_last(j0 + n);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t qt = r_first / kBlockM; qt * kBlockM < r_last; ++qt) {
          const int64_t i0 = qt * kBlockM, M = std::min(f.seqlen_q, i0 + kBlockM) - i0;
          pack_q_tile(p, b, h, i0, M, w);
          tile_ds(p, mg, i0, M, j0, n, w);
          gemm<true>(n, Dp, M, w.S, 1, kBlockN, w.dO, Dp, w.dVa, Dp);   // dV += Pᵀ·dO
          gemm<true>(n, Dp, M, w.dP, 1, kBlockN, w.Qs, Dp, w.dKa, Dp);  // dK += dSᵀ·Q·scale·log base
          if (dq_acc) {
            C* dq = dq_acc + ((b * f.heads_q + h) * f.seqlen_q + i0) * Dp;
            gemm<true>(M, Dp, n, w.dP, kBlockN, 1, w.Kr, Dp, dq, Dp);   // dQ += dS·K
          }
        }
      }
      const C kmul = C(1) / kLogBase;
      for (int64_t j = 0; j < n; ++j) {
        C* a = w.dKa + j * Dp;
        if (kmul != C(1))
          for (int64_t x = 0; x < D; ++x) a[x] *= kmul;
        store_row(a, dk + (j0 + j) * p.dk_s.row, D);
        store_row(w.dVa + j * Dp, dv + (j0 + j) * p.dv_s.row, D);
      }
    }
  }

  static void store_dq(const AttentionBwdParams& p, int64_t b, int64_t h, int64_t i0, int64_t M, C* acc, int64_t ld) {
    const AttentionFwdParams& f = p.fwd;
    T* dq = head_ptr(p.dq, p.dq_s, b, h);
    const C scale = C(f.scale);
    for (int64_t r = 0; r < M; ++r) {
      C* a = acc + r * ld;
      for (int64_t x = 0; x < f.head_dim; ++x) a[x] *= scale;
      store_row(a, dq + (i0 + r) * p.dq_s.row, f.head_dim);
    }
  }

  // Phase 2 (not fused): dQ of (b, h, query tile), summing key tiles in the order phase 1 does.
  static void bwd_q(const AttentionBwdParams& p, int64_t b, int64_t h, int64_t qt, BwdBuf& w) {
    const AttentionFwdParams& f = p.fwd;
    const int64_t D = f.head_dim, Dp = round_up(D, L), hk = h / (f.heads_q / f.heads_kv);
    const MaskGeom mg(f);
    const int64_t i0 = qt * kBlockM, M = std::min(f.seqlen_q, i0 + kBlockM) - i0;
    pack_q_tile(p, b, h, i0, M, w);
    std::fill(w.dQl, w.dQl + M * Dp, C(0));
    const int64_t klo = mg.lo(i0), khi = mg.hi(i0 + M - 1);
    for (int64_t jt = klo / kBlockN; jt * kBlockN < khi; ++jt) {
      const int64_t j0 = jt * kBlockN, n = std::min(f.seqlen_k, j0 + kBlockN) - j0;
      pack_kv_tile(p, b, hk, j0, n, w);
      tile_ds(p, mg, i0, M, j0, n, w);
      gemm<true>(M, Dp, n, w.dP, kBlockN, 1, w.Kr, Dp, w.dQl, Dp);  // dQ += dS·K
    }
    store_dq(p, b, h, i0, M, w.dQl, Dp);
  }

  static AttentionBwdCpuPlan plan(const AttentionBwdParams& p, int threads) {
    const AttentionFwdParams& f = p.fwd;
    AttentionBwdCpuPlan pl;
    const int64_t kv = f.batch * f.heads_kv, ktiles = ceil_div(f.seqlen_k, kBlockN);
    const int64_t qtasks = f.batch * f.heads_q * fwd_tiles(f);
    // Fused does 5 tile products per tile pair, the split schedule 7 but over many more tasks:
    // fuse when the (batch, kv head) tasks fill the threads about as well.
    const int64_t nt = std::max(threads, 1);
    pl.fused = ceil_div(kv, nt) * nt * 10 <= kv * 14;
    pl.tasks[0] = qtasks;
    pl.tasks[1] = pl.fused ? kv : kv * ktiles;
    pl.tasks[2] = pl.fused ? 0 : qtasks;
    pl.workspace_bytes = workspace_bytes(p, pl.fused);
    return pl;
  }

  static void bwd(const AttentionBwdParams& p, const AttentionBwdCpuPlan& pl, int phase, int64_t t0, int64_t t1) {
    const AttentionFwdParams& f = p.fwd;
    if (phase == 0) return bwd_rowsum(p, t0, t1);
    const int64_t D = f.head_dim, Dp = round_up(D, L), group = f.heads_q / std::max<int64_t>(f.heads_kv, 1);
#if defined(MMM_CPU_AVX512)
    BwdBuf w(D, Dp, use_pairs());
#else
    BwdBuf w(D, Dp, false);
#endif
    if (phase == 1) {
      const int64_t ktiles = ceil_div(f.seqlen_k, kBlockN);
      for (int64_t t = t0; t < t1; ++t) {
        if (pl.fused) {
          const int64_t b = t / f.heads_kv, hk = t % f.heads_kv;
          C* acc = dq_ws(p);
          const int64_t rows = f.seqlen_q * Dp;
          for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
            std::fill(acc + (b * f.heads_q + h) * rows, acc + (b * f.heads_q + h + 1) * rows, C(0));
          bwd_kv(p, b, hk, 0, ktiles, acc, w);
          for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
            store_dq(p, b, h, 0, f.seqlen_q, acc + (b * f.heads_q + h) * rows, Dp);
        } else {
          const int64_t kt = t % ktiles, bk = t / ktiles;
          bwd_kv(p, bk / f.heads_kv, bk % f.heads_kv, kt, kt + 1, nullptr, w);
        }
      }
    } else {
      const int64_t tiles = fwd_tiles(f);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t bh = t / tiles;
        bwd_q(p, bh / f.heads_q, bh % f.heads_q, t % tiles, w);
      }
    }
  }
};

template <typename F>
void dispatch(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: f(Attention<float, float>{}); break;
    case DType::kFloat16: f(Attention<Half, float>{}); break;
    case DType::kBFloat16: f(Attention<BFloat16, float>{}); break;
    case DType::kFloat64: f(Attention<double, double>{}); break;
  }
}

}  // namespace

int64_t fwd_tasks(const AttentionFwdParams& p) {
  return p.batch * p.heads_q * ceil_div(p.seqlen_q, kBlockM);
}

void fwd(const AttentionFwdParams& p, int64_t t0, int64_t t1) {
  dispatch(p.dtype, [&](auto k) { k.fwd(p, t0, t1); });
}

AttentionBwdCpuPlan bwd_plan(const AttentionBwdParams& p, int threads) {
  AttentionBwdCpuPlan pl;
  dispatch(p.fwd.dtype, [&](auto k) { pl = k.plan(p, threads); });
  return pl;
}

void bwd(const AttentionBwdParams& p, const AttentionBwdCpuPlan& pl, int phase, int64_t t0, int64_t t1) {
  dispatch(p.fwd.dtype, [&](auto k) { k.bwd(p, pl, phase, t0, t1); });
}
