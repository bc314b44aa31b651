// fused_add_norm's CPU algorithm, compiled once per instruction set by fused_add_norm_cpu.cpp
// (core/cpu_variants.h: inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// fp16/bf16/fp32 (BlockKernels): each row is read from and written to memory once, in blocks of
// one vector register (16 floats with AVX-512) converted in registers; h is kept in an fp32 row
// buffer (L1/L2) between the forward's passes, and the backward's second pass re-reads the row
// from L1/L2 instead of buffering it. Problems bigger than the last-level cache write their
// outputs with streaming stores and prefetch their inputs in software. The GeLU and its
// derivative are vectorised too (vexp / v1p_erf below).
// fp64 (RowKernels, for gradcheck): plain loops over fp64 row buffers.
// Weight and bias are converted once per call, not per row.

#include "core/cpu_rows.h"

namespace {

// ---- Blocks of kW floats held in registers -------------------------------------------------
// One vector register per block: 16 lanes in the AVX-512 variant (MMM_CPU_AVX512), 8 in the
// AVX2 one (MMM_CPU_F16C), 4 (SSE2) otherwise, as GCC vector types so +, -, *, ?: compile to that
// ISA. vload/vstore convert kW elements of a storage type; vstore also returns what it stored,
// read back as float (the value rounded to T), without a trip through memory.

inline constexpr int kW = MMM_CPU_VECTOR_BYTES / int(sizeof(float));
typedef float VF __attribute__((vector_size(kW * sizeof(float))));
typedef uint32_t VU __attribute__((vector_size(kW * sizeof(uint32_t))));
typedef uint16_t VH __attribute__((vector_size(kW * sizeof(uint16_t))));

inline VF vsplat(float f) { return VF{} + f; }
inline float vsum(VF v) {  // fixed order: deterministic
  float s = v[0];
  for (int l = 1; l < kW; ++l) s += v[l];
  return s;
}

inline VF vload(const float* p) { VF v; std::memcpy(&v, p, sizeof v); return v; }
inline VF vload(const ::mmm::BFloat16* p) {
  VH b;
  std::memcpy(&b, p, sizeof b);
  return (VF)(__builtin_convertvector(b, VU) << 16);
}
inline VF vload(const ::mmm::Half* p) {
#if defined(MMM_CPU_AVX512)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(MMM_CPU_F16C)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  VF v;
  for (int l = 0; l < kW; ++l) v[l] = widen(p[l]);
  return v;
#endif
}

inline VF vstore(float* p, VF v) { std::memcpy(p, &v, sizeof v); return v; }
inline VF vstore(::mmm::BFloat16* p, VF v) {  // round to nearest even; NaN stays a (quiet) NaN
  const VU u = (VU)v;
  const VU rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const VU bits = (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded;
  const VH b = __builtin_convertvector(bits, VH);
  std::memcpy(p, &b, sizeof b);
  return (VF)(bits << 16);
}
inline VF vstore(::mmm::Half* p, VF v) {
#if defined(MMM_CPU_AVX512)
  const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  return _mm512_cvtph_ps(h);
#elif defined(MMM_CPU_F16C)
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  return _mm256_cvtph_ps(h);
#else
  VF r;
  for (int l = 0; l < kW; ++l) {
    p[l] = narrow<::mmm::Half>(v[l]);
    r[l] = widen(p[l]);
  }
  return r;
#endif
}

// The same one element at a time, for the tail of a row.
template <typename T>
inline float sload(const T* p) { return widen(*p); }
template <typename T>
inline float sstore(T* p, float v) { *p = narrow<T>(v); return widen(*p); }

// Non-temporal variant of vstore (same rounding, same return) for a block at an address aligned
// to its size: the line goes to memory without being read first.
template <typename T>
inline bool vstream_aligned(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) % (kW * sizeof(T))) == 0;
}
inline VF vstream(float* p, VF v) {
#if defined(MMM_CPU_AVX512)
  _mm512_stream_ps(p, v);
#elif defined(MMM_CPU_F16C)
  _mm256_stream_ps(p, v);
#else
  std::memcpy(p, &v, sizeof v);
#endif
  return v;
}
inline VF vstream(::mmm::BFloat16* p, VF v) {
  const VU u = (VU)v;
  const VU rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const VU bits = (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded;
  const VH b = __builtin_convertvector(bits, VH);
#if defined(MMM_CPU_AVX512)
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), (__m256i)b);
#elif defined(MMM_CPU_F16C)
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), (__m128i)b);
#else
  std::memcpy(p, &b, sizeof b);
#endif
  return (VF)(bits << 16);
}
inline VF vstream(::mmm::Half* p, VF v) {
#if defined(MMM_CPU_AVX512)
  const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
  return _mm512_cvtph_ps(h);
#elif defined(MMM_CPU_F16C)
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
  return _mm256_cvtph_ps(h);
#else
  return vstore(p, v);
#endif
}
// Whether a call touching `bytes` of rows should stream its outputs: only when they could not
// stay in the last-level cache anyway (streaming evicts them, and writes back zero-filled lines
// of freshly faulted pages twice).
inline bool streaming_pays(int64_t bytes) {
  static const int64_t llc = [] {  // one L3 instance (sysconf reports the whole package's)
    int64_t kib = 0;
    if (FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
      long v = 0;
      if (std::fscanf(f, "%ldK", &v) == 1) kib = v;
      std::fclose(f);
    }
    return kib > 0 ? kib << 10 : int64_t(32) << 20;
  }();
  return bytes > llc / 2;
}
inline void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Software prefetch distance, in elements, for the streamed inputs of big problems: the
// hardware prefetchers stop at every 4 KB page, software prefetches do not.
inline int prefetch_distance(bool stream) { return stream ? 1024 : 0; }

template <typename T, typename TH, typename TW>
struct RowKernels {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;

  static void fwd(const FusedAddNormFwdParams& p, int64_t r0, int64_t r1) {
    const int64_t n = p.cols;
    // Absent weight/bias become 1/0 so the output is one fused loop whatever is present.
    std::vector<C> h(n), y(n), w(n, C(1)), b(n, C(0));
    if (p.weight) load_row(static_cast<const TW*>(p.weight), w.data(), n);
    if (p.bias) load_row(static_cast<const TW*>(p.bias), b.data(), n);
    const C scale = p.dropout_p > 0 ? C(1) / (C(1) - C(p.dropout_p)) : C(1);
    const uint32_t threshold = dropout_threshold(p.dropout_p);
    for (int64_t r = r0; r < r1; ++r) {
      load_row(static_cast<const T*>(p.x) + r * p.x_row_stride, h.data(), n);
      if (p.dropout_p > 0) {
        DropoutMask mask{p.seed, threshold};
        const uint64_t idx0 = uint64_t(r) * uint64_t(n);
        for (int64_t j = 0; j < n; ++j) h[j] = mask.keep(idx0 + j) ? h[j] * scale : C(0);
      }
      if (p.residual) {
        load_row(static_cast<const TH*>(p.residual) + r * p.res_row_stride, y.data(), n);
        for (int64_t j = 0; j < n; ++j) h[j] += y[j];
      }
      if (p.h_out) {
        // Normalise h as stored, the value backward reads back (see the CUDA kernel).
        TH* h_row = static_cast<TH*>(p.h_out) + r * p.h_row_stride;
        store_row(h.data(), h_row, n);
        if constexpr (!std::is_same_v<TH, C>) load_row(h_row, h.data(), n);
      } else if constexpr (!std::is_same_v<TH, C>) {  // not stored (inference): rounded all the same
        for (int64_t j = 0; j < n; ++j) h[j] = C(TH(h[j]));
      }

      C mean = 0, var;
      if (p.rms) {
        var = lane_sum<C>(n, [&](int64_t j) { return h[j] * h[j]; }) / C(n);
      } else {
        mean = lane_sum<C>(n, [&](int64_t j) { return h[j]; }) / C(n);
        var = lane_sum<C>(n, [&](int64_t j) { const C d = h[j] - mean; return d * d; }) / C(n);
      }
      const C rstd = C(1) / std::sqrt(var + C(p.eps));
      if (!p.rms) static_cast<C*>(p.mean)[r] = mean;
      static_cast<C*>(p.rstd)[r] = rstd;

      for (int64_t j = 0; j < n; ++j) y[j] = (h[j] - mean) * rstd * w[j] + b[j];
      if (p.act != Activation::kNone)
        for (int64_t j = 0; j < n; ++j) y[j] = activation_fwd(p.act, y[j]);
      store_row(y.data(), static_cast<T*>(p.out) + r * p.out_row_stride, n);
    }
  }

  static int64_t partitions(const FusedAddNormBwdParams& p) {
    constexpr int64_t kMaxPartitions = 32;
    return p.rows < kMaxPartitions ? p.rows : kMaxPartitions;
  }

  // Workspace: [partition][dweight, dbias][N] in C.
  static void bwd_partition(const FusedAddNormBwdParams& p, int64_t part) {
    const int64_t n = p.cols, parts = partitions(p);
    const int64_t r0 = p.rows * part / parts, r1 = p.rows * (part + 1) / parts;
    C* dw = static_cast<C*>(p.workspace) + part * 2 * n;
    C* db = dw + n;
    for (int64_t j = 0; j < 2 * n; ++j) dw[j] = 0;
    std::vector<C> xhat(n), dy(n), tmp(n), w(n, C(1)), b(n, C(0));
    if (p.weight) load_row(static_cast<const TW*>(p.weight), w.data(), n);
    if (p.bias) load_row(static_cast<const TW*>(p.bias), b.data(), n);
    const C scale = p.dropout_p > 0 ? C(1) / (C(1) - C(p.dropout_p)) : C(1);
    const uint32_t threshold = dropout_threshold(p.dropout_p);
    for (int64_t r = r0; r < r1; ++r) {
      const C mean = p.rms ? C(0) : static_cast<const C*>(p.mean)[r];
      const C rstd = static_cast<const C*>(p.rstd)[r];
      load_row(static_cast<const TH*>(p.h) + r * p.h_row_stride, xhat.data(), n);
      load_row(static_cast<const T*>(p.dout) + r * p.dout_row_stride, dy.data(), n);
      for (int64_t j = 0; j < n; ++j) xhat[j] = (xhat[j] - mean) * rstd;
      if (p.act != Activation::kNone)
        for (int64_t j = 0; j < n; ++j) {
          dy[j] *= activation_grad(p.act, xhat[j] * w[j] + b[j]);
        }
      for (int64_t j = 0; j < n; ++j) {
        dw[j] += dy[j] * xhat[j];
        db[j] += dy[j];
        dy[j] *= w[j];  // dy becomes dxhat
      }
      // LayerNorm: dh = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); RMSNorm drops
      // the mean(dxhat) term because the mean was never subtracted.
      const C c1 = lane_sum<C>(n, [&](int64_t j) { return dy[j] * xhat[j]; }) / C(n);
      const C c2 = p.rms ? C(0) : lane_sum<C>(n, [&](int64_t j) { return dy[j]; }) / C(n);
      for (int64_t j = 0; j < n; ++j) tmp[j] = rstd * (dy[j] - c2 - xhat[j] * c1);
      if (p.dh_out) {
        load_row(static_cast<const TH*>(p.dh_out) + r * p.dh_out_row_stride, dy.data(), n);
        for (int64_t j = 0; j < n; ++j) tmp[j] += dy[j];
      }
      if (p.dresidual) store_row(tmp.data(), static_cast<TH*>(p.dresidual) + r * p.dres_row_stride, n);
      if (p.dropout_p > 0) {
        DropoutMask mask{p.seed, threshold};
        const uint64_t idx0 = uint64_t(r) * uint64_t(n);
        for (int64_t j = 0; j < n; ++j) tmp[j] = mask.keep(idx0 + j) ? tmp[j] * scale : C(0);
      }
      store_row(tmp.data(), static_cast<T*>(p.dx) + r * p.dx_row_stride, n);
    }
  }

  static void bwd_finalize(const FusedAddNormBwdParams& p, int64_t c0, int64_t c1) {
    const int64_t n = p.cols, parts = partitions(p);
    const C* ws = static_cast<const C*>(p.workspace);
    std::vector<C> sw(c1 - c0, C(0)), sb(c1 - c0, C(0));
    for (int64_t q = 0; q < parts; ++q)  // fixed order: bitwise reproducible
      for (int64_t j = c0; j < c1; ++j) {
        sw[j - c0] += ws[q * 2 * n + j];
        sb[j - c0] += ws[q * 2 * n + n + j];
      }
    if (p.dweight) store_row(sw.data(), static_cast<TW*>(p.dweight) + c0, c1 - c0);
    if (p.dbias) store_row(sb.data(), static_cast<TW*>(p.dbias) + c0, c1 - c0);
  }
};

// ---- The activations on one block ---------------------------------------------------------
// Same functions as activation.h, vectorised, with polynomials fitted for this file (weighted
// least squares on Chebyshev nodes against erf/erfc/exp in high precision): a few float ulp of
// each result, i.e. as accurate as erff/expf for these uses. NaN propagates through the final
// products with y.
typedef int32_t VI __attribute__((vector_size(kW * sizeof(int32_t))));

inline VF vpoly(VF x, std::initializer_list<float> c) {  // c[0] + c[1] x + ... (Horner)
  const float* const p = c.begin();
  VF acc = vsplat(p[c.size() - 1]);
  for (size_t i = c.size() - 1; i-- > 0;) acc = acc * x + p[i];
  return acc;
}

// exp(x) for x in [-87, 88] (clamped outside): exp(x) = 2^k exp(r), |r| <= ln2 / 2.
inline VF vexp(VF x) {
  x = x < -87.f ? vsplat(-87.f) : x;
  x = x > 88.f ? vsplat(88.f) : x;
  const VF kf = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest
  VF r = x - kf * 0.693359375f;                                  // ln 2 in two parts
  r = r - kf * -2.12194440e-4f;
  const VF e = vpoly(r, {1.000000001e+00f, 1.000000036e+00f, 4.999999149e-01f, 1.666642076e-01f,
                         4.166835855e-02f, 8.374777796e-03f, 1.382941158e-03f});
  return (VF)((VI)e + (__builtin_convertvector(kf, VI) << 23));
}

// 1 + erf(z), to a few ulp of the result also where it is tiny (z < -1: erfc(|z|), no
// cancellation). |z| < 1: z P(z^2); else erfc(|z|) = exp(-z^2) Q(1/|z| - 0.625), fitted on
// [1, 4] (erfc(4) = 1.5e-8 is far below an ulp of 2; beyond, erfc <= 1e-8 times Q(0.25)).
inline VF v1p_erf(VF z) {
  const VF a = (VF)((VU)z & 0x7fffffffu);
  const VF z2 = z * z;
  const VF center = 1.f + z * vpoly(z2, {1.128379167e+00f, -3.761262884e-01f, 1.128361243e-01f,
                                         -2.685480854e-02f, 5.190053578e-03f, -8.024354132e-04f,
                                         7.898210218e-05f});
  const VF v = 1.f / (a < 1.f ? vsplat(1.f) : a) - 0.625f;
  const VF q = vexp(-z2) * vpoly(v, {3.059529735e-01f, 3.822834865e-01f, -1.723900350e-01f,
                                     4.379673953e-02f, 2.313508631e-02f, -4.775279337e-02f,
                                     4.606366625e-02f, -1.892648941e-02f, -1.207988461e-02f});
  return a < 1.f ? center : z > 0.f ? 2.f - q : q;
}

inline VF vactivation_fwd(Activation act, VF y) {
  if (act == Activation::kGelu) return 0.5f * y * v1p_erf(y * 0.70710678118654752440f);
  // gelu_tanh: y/2 (1 + tanh(u)) = y sigmoid(2u).
  const VF u2 = 1.5957691216057307f * (y + 0.044715f * y * y * y);
  return y / (1.f + vexp(-u2));
}

inline VF vactivation_grad(Activation act, VF y) {
  if (act == Activation::kGelu) {
    const VF cdf = 0.5f * v1p_erf(y * 0.70710678118654752440f);
    const VF pdf = vexp(-0.5f * y * y) * 0.39894228040143267794f;
    return cdf + y * pdf;
  }
  // gelu_tanh with s = sigmoid(2u) = (1 + tanh(u)) / 2: 1 - tanh(u)^2 = 4 s (1 - s), and
  // 1 - s = e s with e = exp(-2u) (no cancellation).
  const float k = 0.79788456080286535588f;
  const VF e = vexp(-2.f * k * (y + 0.044715f * y * y * y));
  const VF s = 1.f / (1.f + e);
  return s + 2.f * y * s * (e * s) * k * (1.f + float(3 * 0.044715) * y * y);
}

// Dropout on one block: kept lanes scaled, dropped lanes exactly +0 (as the scalar select).
inline VF dropout_block(DropoutMask& mask, uint64_t idx, VF v, float scale) {
  VU keep;
  for (int l = 0; l < kW; ++l) keep[l] = mask.keep(idx + l) ? ~0u : 0u;
  return (VF)((VU)(v * scale) & keep);
}

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a template argument.
template <typename F>
inline auto with_flag(bool b, F&& f) {
  return b ? f(std::true_type{}) : f(std::false_type{});
}

// fp32 compute (x in fp32, fp16 or bf16). Each row is read from and written to memory once:
// the forward's first pass loads x (and residual), adds, stores residual_out, keeps h in an fp32
// row buffer (L1/L2) and sums it; the variance and output passes then read that buffer and
// convert and store the output block by block in registers. The backward is two passes the same
// way. Same formulas and rounding points as RowKernels; only the grouping of the row sums
// differs (2 x kW lanes, combined in a fixed order). Each pass is instantiated per combination
// of the options it sees, picked once per call through a function pointer, so the inner loops
// have no branches.
template <typename T, typename TH, typename TW>
struct BlockKernels {
  // Forward pass 1 for row r: h = dropout(x) + residual, rounded to h's dtype (stored to
  // residual_out when there is one, and read back), kept in hb; returns mean(h) (mean(h^2) for
  // RMSNorm). Normalising the rounded h matches what backward reads back, and makes the output
  // the same whether or not h is stored.
  template <bool kRes, bool kHo, bool kDrop, bool kRms>
  static float fwd_h(const FusedAddNormFwdParams& p, int64_t r, float* __restrict hb, bool stream, int pf) {
    constexpr bool kRound = (kRes || kDrop) && !std::is_same_v<TH, float>;
    const int64_t n = p.cols, nv = n - n % kW;
    const T* __restrict x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    const TH* __restrict res = kRes ? static_cast<const TH*>(p.residual) + r * p.res_row_stride : nullptr;
    // Normalise h as stored, the value backward reads back (see the CUDA kernel).
    TH* __restrict ho = kHo ? static_cast<TH*>(p.h_out) + r * p.h_row_stride : nullptr;
    const float scale = kDrop ? 1.f / (1.f - float(p.dropout_p)) : 1.f;
    DropoutMask mask{p.seed, dropout_threshold(p.dropout_p)};
    const uint64_t idx0 = uint64_t(r) * uint64_t(n);
    const bool nt = stream && kHo && vstream_aligned(ho);
    auto block = [&](int64_t j) {
      if (pf) {
        __builtin_prefetch(x + j + pf);
        if constexpr (kRes) __builtin_prefetch(res + j + pf);
      }
      VF h = vload(x + j);
      if constexpr (kDrop) h = dropout_block(mask, idx0 + j, h, scale);
      if constexpr (kRes) h += vload(res + j);
      if constexpr (kHo) {
        h = nt ? vstream(ho + j, h) : vstore(ho + j, h);
      } else if constexpr (kRound) {  // h not stored (inference): the same rounding all the same
        TH t[kW];
        h = vstore(t, h);
      }
      vstore(hb + j, h);
      if constexpr (kRms) return h * h;
      else return h;
    };
    VF a0 = {}, a1 = {};
    int64_t j = 0;
    for (; j + 2 * kW <= nv; j += 2 * kW) {
      a0 += block(j);
      a1 += block(j + kW);
    }
    if (j < nv) a0 += block(j), j += kW;
    float st = 0;
    for (; j < n; ++j) {
      float h = sload(x + j);
      if constexpr (kDrop) h = mask.keep(idx0 + j) ? h * scale : 0.f;
      if constexpr (kRes) h += sload(res + j);
      if constexpr (kHo) {
        h = sstore(ho + j, h);
      } else if constexpr (kRound) {
        TH t;
        h = sstore(&t, h);
      }
      hb[j] = h;
      st += kRms ? h * h : h;
    }
    return (vsum(a0 + a1) + st) / float(n);
  }

  // mean((h - mean)^2) over the row buffer (four accumulators: this pass is latency-bound).
  static float fwd_var(const float* __restrict hb, int64_t n, float mean) {
    const int64_t nv = n - n % kW;
    const VF m = vsplat(mean);
    VF v[4] = {};
    int64_t j = 0;
    for (; j + 4 * kW <= nv; j += 4 * kW)
      for (int i = 0; i < 4; ++i) {
        const VF d = vload(hb + j + i * kW) - m;
        v[i] += d * d;
      }
    for (int i = 0; j < nv; j += kW, ++i) {
      const VF d = vload(hb + j) - m;
      v[i] += d * d;
    }
    float vt = 0;
    for (; j < n; ++j) vt += (hb[j] - mean) * (hb[j] - mean);
    return (vsum((v[0] + v[1]) + (v[2] + v[3])) + vt) / float(n);
  }

  // Forward pass 2: out = act((h - mean) * rstd * w + b), converted and stored block by block.
  template <bool kAct>
  static void fwd_out(const FusedAddNormFwdParams& p, int64_t r, const float* __restrict hb,
                      const float* __restrict w, const float* __restrict b, float mean, float rstd,
                      bool stream) {
    const int64_t n = p.cols, nv = n - n % kW;
    T* __restrict out = static_cast<T*>(p.out) + r * p.out_row_stride;
    const Activation act = p.act;
    const VF m = vsplat(mean), rs = vsplat(rstd);
    const bool nt = stream && vstream_aligned(out);
    int64_t j = 0;
    for (; j < nv; j += kW) {
      VF y = (vload(hb + j) - m) * rs * vload(w + j) + vload(b + j);
      if constexpr (kAct)
        y = vactivation_fwd(act, y);
      if (nt) vstream(out + j, y); else vstore(out + j, y);
    }
    for (; j < n; ++j) {
      float y = (hb[j] - mean) * rstd * w[j] + b[j];
      if constexpr (kAct) y = activation_fwd(act, y);
      sstore(out + j, y);
    }
  }

  static void fwd(const FusedAddNormFwdParams& p, int64_t r0, int64_t r1) {
    const int64_t n = p.cols;
    std::vector<float> buf(3 * n);
    float* const w = buf.data();
    float* const b = w + n;
    float* const hb = b + n;
    if (p.weight) load_row(static_cast<const TW*>(p.weight), w, n);
    else std::fill(w, w + n, 1.f);
    if (p.bias) load_row(static_cast<const TW*>(p.bias), b, n);
    else std::fill(b, b + n, 0.f);

    using H = float (*)(const FusedAddNormFwdParams&, int64_t, float*, bool, int);
    const H h_pass = with_flag(p.rms, [&](auto rms) -> H {
      return with_flag(p.residual != nullptr, [&](auto res) -> H {
        return with_flag(p.dropout_p > 0, [&](auto drop) -> H {
          return p.h_out ? &fwd_h<res, true, drop, rms> : &fwd_h<res, false, drop, rms>;
        });
      });
    });
    const auto out_pass = p.act != Activation::kNone ? &fwd_out<true> : &fwd_out<false>;
    const float eps = float(p.eps);
    // Outputs bigger than the cache go to memory with streaming stores: no read for ownership.
    const int64_t sx = sizeof(T), sh = sizeof(TH);
    const bool stream = streaming_pays(p.rows * n * (2 * sx + (p.residual ? sh : 0) + (p.h_out ? sh : 0)));
    const int pf = prefetch_distance(stream);
    for (int64_t r = r0; r < r1; ++r) {
      const float s = h_pass(p, r, hb, stream, pf);
      const float mean = p.rms ? 0.f : s;
      const float var = p.rms ? s : fwd_var(hb, n, mean);
      const float rstd = 1.f / std::sqrt(var + eps);
      if (!p.rms) static_cast<float*>(p.mean)[r] = mean;
      static_cast<float*>(p.rstd)[r] = rstd;
      out_pass(p, r, hb, w, b, mean, rstd, stream);
    }
    stream_fence();
  }

  static int64_t partitions(const FusedAddNormBwdParams& p) { return RowKernels<T, TH, TW>::partitions(p); }

  // Backward pass 1 for rows r .. r+R-1 together: g = dy * act'(y) added to dweight/dbias (dw,
  // db) against xhat, in row order (the same sums as one row at a time, with dw/db read and
  // written once per R rows); c1[i] = mean(dxhat * xhat) and c2[i] = mean(dxhat) with
  // dxhat = g * w. With an activation g goes to gb (row i at gb + i n), otherwise pass 2 reloads
  // dy.
  template <bool kAct, int R>
  static void bwd_g(const FusedAddNormBwdParams& p, int64_t r, float* __restrict dw, float* __restrict db,
                    const float* __restrict w, const float* __restrict b, float* __restrict gb, int pf,
                    float* c1_out, float* c2_out) {
    const int64_t n = p.cols, nv = n - n % kW;
    const Activation act = p.act;
    const TH* h[R];
    const T* dout[R];
    float mean[R], rstd[R];
    VF m[R], rs[R], c1[R], c2[R];
    for (int i = 0; i < R; ++i) {
      mean[i] = p.rms ? 0.f : static_cast<const float*>(p.mean)[r + i];
      rstd[i] = static_cast<const float*>(p.rstd)[r + i];
      h[i] = static_cast<const TH*>(p.h) + (r + i) * p.h_row_stride;
      dout[i] = static_cast<const T*>(p.dout) + (r + i) * p.dout_row_stride;
      m[i] = vsplat(mean[i]);
      rs[i] = vsplat(rstd[i]);
      c1[i] = c2[i] = VF{};
    }
    int64_t j = 0;
    for (; j < nv; j += kW) {
      VF dwv = vload(dw + j), dbv = vload(db + j);
      const VF wv = vload(w + j);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        if (pf) {
          __builtin_prefetch(h[i] + j + pf);
          __builtin_prefetch(dout[i] + j + pf);
        }
        const VF xh = (vload(h[i] + j) - m[i]) * rs[i];
        VF g = vload(dout[i] + j);
        if constexpr (kAct) {
          g *= vactivation_grad(act, xh * wv + vload(b + j));
          vstore(gb + i * n + j, g);
        }
        dwv += g * xh;
        dbv += g;
        const VF gw = g * wv;
        c1[i] += gw * xh;
        c2[i] += gw;
      }
      vstore(dw + j, dwv);
      vstore(db + j, dbv);
    }
    float c1t[R] = {}, c2t[R] = {};
    for (; j < n; ++j)
      for (int i = 0; i < R; ++i) {
        const float xh = (sload(h[i] + j) - mean[i]) * rstd[i];
        float g = sload(dout[i] + j);
        if constexpr (kAct) g *= activation_grad(act, xh * w[j] + b[j]), gb[i * n + j] = g;
        dw[j] += g * xh;
        db[j] += g;
        const float gw = g * w[j];
        c1t[i] += gw * xh;
        c2t[i] += gw;
      }
    for (int i = 0; i < R; ++i) {
      c1_out[i] = (vsum(c1[i]) + c1t[i]) / float(n);
      c2_out[i] = (vsum(c2[i]) + c2t[i]) / float(n);
    }
  }

  // Backward pass 2, on the row pass 1 left in L1/L2: xhat and dxhat recomputed as in pass 1,
  // dresidual = rstd * (dxhat - c2 - xhat * c1) (+ grad of residual_out), dx = dropout'(dresidual).
  template <bool kAct, bool kDh, bool kDres, bool kDrop>
  static void bwd_dx(const FusedAddNormBwdParams& p, int64_t r, float mean, float rstd, float c1, float c2,
                     const float* __restrict w, const float* __restrict gb, bool stream, int pf) {
    const int64_t n = p.cols, nv = n - n % kW;
    const TH* __restrict h = static_cast<const TH*>(p.h) + r * p.h_row_stride;
    const T* __restrict dout = static_cast<const T*>(p.dout) + r * p.dout_row_stride;
    const TH* __restrict dh = kDh ? static_cast<const TH*>(p.dh_out) + r * p.dh_out_row_stride : nullptr;
    TH* __restrict dres = kDres ? static_cast<TH*>(p.dresidual) + r * p.dres_row_stride : nullptr;
    T* __restrict dx = static_cast<T*>(p.dx) + r * p.dx_row_stride;
    const float scale = kDrop ? 1.f / (1.f - float(p.dropout_p)) : 1.f;
    DropoutMask mask{p.seed, dropout_threshold(p.dropout_p)};
    const uint64_t idx0 = uint64_t(r) * uint64_t(n);
    const VF m = vsplat(mean), rs = vsplat(rstd), vc1 = vsplat(c1), vc2 = vsplat(c2);
    const bool nt = stream && vstream_aligned(dx) && (!kDres || vstream_aligned(dres));
    int64_t j = 0;
    for (; j < nv; j += kW) {
      const VF xh = (vload(h + j) - m) * rs;
      const VF gw = (kAct ? vload(gb + j) : vload(dout + j)) * vload(w + j);
      VF t = rs * (gw - vc2 - xh * vc1);
      if constexpr (kDh) {
        if (pf) __builtin_prefetch(dh + j + pf);
        t += vload(dh + j);
      }
      if constexpr (kDres) nt ? vstream(dres + j, t) : vstore(dres + j, t);
      if constexpr (kDrop) t = dropout_block(mask, idx0 + j, t, scale);
      nt ? vstream(dx + j, t) : vstore(dx + j, t);
    }
    for (; j < n; ++j) {
      const float xh = (sload(h + j) - mean) * rstd;
      const float gw = (kAct ? gb[j] : sload(dout + j)) * w[j];
      float t = rstd * (gw - c2 - xh * c1);
      if constexpr (kDh) t += sload(dh + j);
      if constexpr (kDres) sstore(dres + j, t);
      if constexpr (kDrop) t = mask.keep(idx0 + j) ? t * scale : 0.f;
      sstore(dx + j, t);
    }
  }

  // Workspace: [partition][dweight, dbias][N] in fp32.
  static void bwd_partition(const FusedAddNormBwdParams& p, int64_t part) {
    const int64_t n = p.cols, parts = partitions(p);
    const int64_t r0 = p.rows * part / parts, r1 = p.rows * (part + 1) / parts;
    float* const dw = static_cast<float*>(p.workspace) + part * 2 * n;
    float* const db = dw + n;
    std::fill(dw, dw + 2 * n, 0.f);
    constexpr int R = 4;  // rows per pass 1
    const bool act = p.act != Activation::kNone;
    std::vector<float> buf((act ? 2 + R : 2) * n);
    float* const w = buf.data();
    float* const b = w + n;
    float* const gb = act ? b + n : nullptr;  // dy * act'(y) of R rows
    if (p.weight) load_row(static_cast<const TW*>(p.weight), w, n);
    else std::fill(w, w + n, 1.f);
    if (p.bias) load_row(static_cast<const TW*>(p.bias), b, n);
    else std::fill(b, b + n, 0.f);

    const auto g_rows = act ? &bwd_g<true, R> : &bwd_g<false, R>;
    const auto g_row = act ? &bwd_g<true, 1> : &bwd_g<false, 1>;
    using DX = void (*)(const FusedAddNormBwdParams&, int64_t, float, float, float, float, const float*,
                        const float*, bool, int);
    const DX dx_pass = with_flag(act, [&](auto kact) {
      return with_flag(p.dh_out != nullptr, [&](auto kdh) {
        return with_flag(p.dresidual != nullptr, [&](auto kdres) -> DX {
          return p.dropout_p > 0 ? &bwd_dx<kact, kdh, kdres, true> : &bwd_dx<kact, kdh, kdres, false>;
        });
      });
    });
    // Outputs bigger than the cache go to memory with streaming stores: no read for ownership.
    const int64_t sx = sizeof(T), sh = sizeof(TH);
    const bool stream = streaming_pays(
        p.rows * n * (2 * sx + sh + (p.dh_out ? sh : 0) + (p.dresidual ? sh : 0)));
    const int pf = prefetch_distance(stream);
    // LayerNorm: dh = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); RMSNorm drops
    // the mean(dxhat) term because the mean was never subtracted.
    auto dx_rows = [&](int64_t r, int rows, const float* c1, const float* c2) {
      for (int i = 0; i < rows; ++i) {
        const float mean = p.rms ? 0.f : static_cast<const float*>(p.mean)[r + i];
        const float rstd = static_cast<const float*>(p.rstd)[r + i];
        dx_pass(p, r + i, mean, rstd, c1[i], p.rms ? 0.f : c2[i], w, act ? gb + i * n : nullptr, stream, pf);
      }
    };
    float c1[R], c2[R];
    int64_t r = r0;
    // Grouping pays once dweight/dbias (8 n bytes) no longer stay in L1 between rows.
    const bool group = n > 2048;
    for (; group && r + R <= r1; r += R) {
      g_rows(p, r, dw, db, w, b, gb, pf, c1, c2);
      dx_rows(r, R, c1, c2);
    }
    for (; r < r1; ++r) {
      g_row(p, r, dw, db, w, b, gb, pf, c1, c2);
      dx_rows(r, 1, c1, c2);
    }
    stream_fence();
  }

  static void bwd_finalize(const FusedAddNormBwdParams& p, int64_t c0, int64_t c1) {
    RowKernels<T, TH, TW>::bwd_finalize(p, c0, c1);
  }
};

// fp64 keeps the plain row loops in double (gradcheck); everything else runs BlockKernels.
template <typename T, typename TH, typename TW>
using Kernels = std::conditional_t<std::is_same_v<T, double>, RowKernels<T, TH, TW>, BlockKernels<T, TH, TW>>;

// One switch from runtime dtypes to the instantiation; the glue has already rejected every
// combination not listed here.
template <typename F>
void dispatch(DType x, DType h, DType w, F&& f) {
  auto with_w = [&](auto tx, auto th) {
    using TX = decltype(tx);
    if (w == DType::kFloat32) f(Kernels<TX, decltype(th), float>{});
    else f(Kernels<TX, decltype(th), TX>{});
  };
  switch (x) {
    case DType::kFloat32: f(Kernels<float, float, float>{}); break;
    case DType::kFloat64:
      if (h == DType::kFloat32) with_w(double{}, float{}); else with_w(double{}, double{});
      break;
    case DType::kFloat16:
      if (h == DType::kFloat32) with_w(Half{}, float{}); else with_w(Half{}, Half{});
      break;
    case DType::kBFloat16:
      if (h == DType::kFloat32) with_w(BFloat16{}, float{}); else with_w(BFloat16{}, BFloat16{});
      break;
  }
}

}  // namespace

void fwd(const FusedAddNormFwdParams& p, int64_t row_begin, int64_t row_end) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.fwd(p, row_begin, row_end); });
}

int64_t bwd_partitions(const FusedAddNormBwdParams& p) {
  int64_t n = 0;
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { n = k.partitions(p); });
  return n;
}

void bwd_partition(const FusedAddNormBwdParams& p, int64_t partition) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.bwd_partition(p, partition); });
}

void bwd_finalize(const FusedAddNormBwdParams& p, int64_t col_begin, int64_t col_end) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.bwd_finalize(p, col_begin, col_end); });
}
