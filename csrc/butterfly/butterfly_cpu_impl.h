// butterfly_multiply's CPU algorithm, compiled once per instruction set by butterfly_cpu.cpp
// (inside namespace mmm::<isa>; no include guard, no includes on purpose but core/cpu_lanes.h).
//
// A stack's rows run a vector at a time, one row per lane (core/cpu_lanes.h; complex rows as a
// vector of real parts and one of imaginary parts): each factor's 2x2 blocks are vertical
// arithmetic with broadcast twiddles at the full vector width, whatever the stride (one row at a
// time, the strides narrower than a vector do not vectorise). Stacks of fewer rows than half a
// vector, and backward passes whose per-thread buffers would pass kLanesMaxBytes, run one row at
// a time (the CUDA kernels' twin). Either way the twiddles are first converted to the compute
// type in a planar layout (stack, factor, ij, p), so that the inner loop of a factor (over
// q < stride, consecutive pairs) reads four contiguous twiddle streams and two contiguous halves
// of the row (or of its lanes).
// Backward stores the L+1 intermediate rows of the rows it is working on (CPU memory is cheap; the
// CUDA kernels recompute instead) and accumulates dtwiddle per fixed chunk of rows.

#include "core/cpu_lanes.h"

namespace {

template <typename C> struct is_cx : std::false_type {};
template <typename R> struct is_cx<std::complex<R>> : std::true_type {};

template <typename C> inline C conj_(C v) {
  if constexpr (is_cx<C>::value) return std::conj(v);
  else return v;
}

// One element of storage type `t` at index i as compute type C.
template <typename C> inline C load_one(const void* base, DType t, int64_t i) {
  if constexpr (is_cx<C>::value) {
    using R = typename C::value_type;
    if (t == DType::kComplex64) {
      const auto v = static_cast<const std::complex<float>*>(base)[i];
      return C(R(v.real()), R(v.imag()));
    }
    const auto v = static_cast<const std::complex<double>*>(base)[i];
    return C(R(v.real()), R(v.imag()));
  } else {
    switch (t) {
      case DType::kFloat16: return C(widen(static_cast<const Half*>(base)[i]));
      case DType::kBFloat16: return C(widen(static_cast<const BFloat16*>(base)[i]));
      case DType::kFloat64: return C(static_cast<const double*>(base)[i]);
      default: return C(static_cast<const float*>(base)[i]);
    }
  }
}

template <typename C> inline void store_one(void* base, DType t, int64_t i, C v) {
  if constexpr (is_cx<C>::value) {
    if (t == DType::kComplex64) static_cast<std::complex<float>*>(base)[i] = std::complex<float>(v);
    else static_cast<std::complex<double>*>(base)[i] = std::complex<double>(v);
  } else {
    switch (t) {
      case DType::kFloat16: static_cast<Half*>(base)[i] = narrow<Half>(float(v)); break;
      case DType::kBFloat16: static_cast<BFloat16*>(base)[i] = narrow<BFloat16>(float(v)); break;
      case DType::kFloat64: static_cast<double*>(base)[i] = double(v); break;
      default: static_cast<float*>(base)[i] = float(v); break;
    }
  }
}

// A row of storage type t (len elements at base) into dst[0, n), zero padded.
template <typename C> void load_row(C* dst, const void* base, DType t, int64_t len, int64_t n) {
  switch (t) {
    case DType::kFloat32:
      for (int64_t i = 0; i < len; ++i) dst[i] = C(static_cast<const float*>(base)[i]);
      break;
    case DType::kFloat64:
      if constexpr (!is_cx<C>::value)
        for (int64_t i = 0; i < len; ++i) dst[i] = C(static_cast<const double*>(base)[i]);
      break;
    default:
      for (int64_t i = 0; i < len; ++i) dst[i] = load_one<C>(base, t, i);
  }
  for (int64_t i = len; i < n; ++i) dst[i] = C(0);
}

template <typename C> void store_row(void* base, DType t, const C* src, int64_t len) {
  if (t == DType::kFloat32) {
    if constexpr (!is_cx<C>::value)
      for (int64_t i = 0; i < len; ++i) static_cast<float*>(base)[i] = float(src[i]);
    return;
  }
  for (int64_t i = 0; i < len; ++i) store_one<C>(base, t, i, src[i]);
}

// (nstacks, L, n/2, 4) in storage -> (nstacks, L, 4, n/2) planar compute type.
template <typename C> std::vector<C> planar_twiddles(const ButterflyParams& p) {
  const int64_t h = p.n / 2, mats = p.nstacks * p.factors();
  std::vector<C> out(static_cast<size_t>(mats * 4 * h));
  for (int64_t m = 0; m < mats; ++m)
    for (int64_t q = 0; q < h; ++q)
      for (int ij = 0; ij < 4; ++ij) out[size_t((m * 4 + ij) * h + q)] = load_one<C>(p.twiddle, p.tw_dtype, (m * h + q) * 4 + ij);
  return out;
}

// v <- B v for one factor of stride 2^s with planar twiddles t (4 planes of n/2).
template <typename C> void apply_factor(C* __restrict v, const C* __restrict t, int64_t n, int s) {
  const int64_t h = n / 2, S = int64_t(1) << s;
  const C *t00 = t, *t01 = t + h, *t10 = t + 2 * h, *t11 = t + 3 * h;
  for (int64_t k = 0; k < n / (2 * S); ++k) {
    C* __restrict lo = v + k * 2 * S;
    C* __restrict hi = lo + S;
    const int64_t p0 = k * S;
    for (int64_t q = 0; q < S; ++q) {
      const C a = lo[q], b = hi[q];
      lo[q] = t00[p0 + q] * a + t01[p0 + q] * b;
      hi[q] = t10[p0 + q] * a + t11[p0 + q] * b;
    }
  }
}

// d (the gradient at the factor's output, in place) -> the gradient at its input v; g (planar,
// like t) += the twiddle gradient.
template <typename C>
void backward_factor(C* __restrict d, const C* __restrict v, const C* __restrict t, C* __restrict g, int64_t n, int s) {
  const int64_t h = n / 2, S = int64_t(1) << s;
  const C *t00 = t, *t01 = t + h, *t10 = t + 2 * h, *t11 = t + 3 * h;
  C *g00 = g, *g01 = g + h, *g10 = g + 2 * h, *g11 = g + 3 * h;
  for (int64_t k = 0; k < n / (2 * S); ++k) {
    C* __restrict dlo = d + k * 2 * S;
    C* __restrict dhi = dlo + S;
    const C* vlo = v + k * 2 * S;
    const C* vhi = vlo + S;
    const int64_t p0 = k * S;
    for (int64_t q = 0; q < S; ++q) {
      const int64_t pq = p0 + q;
      const C a = conj_(vlo[q]), b = conj_(vhi[q]), da = dlo[q], db = dhi[q];
      g00[pq] += da * a;
      g01[pq] += da * b;
      g10[pq] += db * a;
      g11[pq] += db * b;
      dlo[q] = conj_(t00[pq]) * da + conj_(t10[pq]) * db;
      dhi[q] = conj_(t01[pq]) * da + conj_(t11[pq]) * db;
    }
  }
}

template <typename C> void forward(const ButterflyParams& p, const CpuParallelFor& pf) {
  const std::vector<C> tw = planar_twiddles<C>(p);
  const int64_t n = p.n, L = p.factors(), nr = p.n_read();
  const int64_t grain = std::max<int64_t>(1, 65536 / (n * L));
  pf(0, p.rows(), grain, [&](int64_t r0, int64_t r1) {
    std::vector<C> buf(static_cast<size_t>(n));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t stack = r % p.nstacks;
      const void* xr = static_cast<const char*>(p.x) + r * p.x_row_stride * elem_bytes(p.x_dtype);
      load_row(buf.data(), xr, p.x_dtype, nr, n);
      for (int64_t f = 0; f < L; ++f) apply_factor(buf.data(), tw.data() + (stack * L + f) * 2 * n, n, p.stride_log2(f));
      store_row(static_cast<char*>(p.y) + r * n * elem_bytes(p.x_dtype), p.x_dtype, buf.data(), n);
    }
  });
}

// dtwiddle[s, f, q, ij] = the sum over chunks, in chunk order, of the planar partials
// (chunks, nstacks, L, 4, n/2).
template <typename C>
void store_dtwiddle(const ButterflyParams& p, const CpuParallelFor& pf, const std::vector<C>& partial, int64_t chunks) {
  const int64_t h = p.n / 2, mats = p.nstacks * p.factors(), tw_elems = mats * 2 * p.n;
  pf(0, mats, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int ij = 0; ij < 4; ++ij)
        for (int64_t q = 0; q < h; ++q) {
          C s = C(0);
          for (int64_t c = 0; c < chunks; ++c) s += partial[size_t(c * tw_elems + (m * 4 + ij) * h + q)];
          store_one<C>(p.dtwiddle, p.tw_dtype, (m * h + q) * 4 + ij, s);
        }
  });
}

template <typename C> void backward(const ButterflyParams& p, const CpuParallelFor& pf) {
  const std::vector<C> tw = planar_twiddles<C>(p);
  const int64_t n = p.n, L = p.factors(), nr = p.n_read(), rows = p.rows();
  const int64_t tw_elems = p.nstacks * L * 2 * n;  // planar (nstacks, L, 4, n/2)
  // Fixed chunks of rows, each with its own dtwiddle partial: the reduction order depends on
  // the shapes only. Fewer chunks when the partials would get large.
  const int64_t chunks = std::clamp<int64_t>(std::min<int64_t>(16, (int64_t(1) << 24) / tw_elems), 1, std::max<int64_t>(rows, 1));
  std::vector<C> partial(size_t(chunks * tw_elems), C(0));
  const size_t xb = elem_bytes(p.x_dtype);
  pf(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<C> acts(static_cast<size_t>((L + 1) * n)), d(static_cast<size_t>(n));
    for (int64_t c = c0; c < c1; ++c) {
      C* g = partial.data() + c * tw_elems;
      for (int64_t r = rows * c / chunks; r < rows * (c + 1) / chunks; ++r) {
        const int64_t stack = r % p.nstacks;
        const C* t = tw.data() + stack * L * 2 * n;
        load_row(acts.data(), static_cast<const char*>(p.x) + r * p.x_row_stride * xb, p.x_dtype, nr, n);
        for (int64_t f = 0; f < L; ++f) {
          std::copy(acts.begin() + f * n, acts.begin() + (f + 1) * n, acts.begin() + (f + 1) * n);
          apply_factor(acts.data() + (f + 1) * n, t + f * 2 * n, n, p.stride_log2(f));
        }
        load_row(d.data(), static_cast<const char*>(p.dy) + r * p.dy_row_stride * xb, p.x_dtype, n, n);
        for (int64_t f = L - 1; f >= 0; --f)
          backward_factor(d.data(), acts.data() + f * n, t + f * 2 * n, g + (stack * L + f) * 2 * n, n, p.stride_log2(f));
        store_row(static_cast<char*>(p.dx) + r * p.n_in * xb, p.x_dtype, d.data(), nr);
      }
    }
  });
  store_dtwiddle(p, pf, partial, chunks);
}

// ---- A vector of rows at a time -----------------------------------------------------------------

// A lane vector of compute type C (core/cpu_lanes.h; complex: a vector of real parts and one of
// imaginary parts) and the arithmetic the factors need on it.
template <typename C, bool = is_cx<C>::value>
struct RowLanes {
  using L = CpuLanes<C, MMM_CPU_VECTOR_BYTES>;
  using E = typename L::V;
  static constexpr int kLanes = L::kLanes;
  static E mul(C t, E a) { return L::splat(t) * a; }  // t broadcast
  static E add(E a, E b) { return a + b; }
  static E mul_conj(E d, E a) { return d * a; }  // d conj(a)
  static C lane(const E& e, int l) { return e[l]; }
  static void load(E* dst, const C* rows, int64_t n, int used) { L::load(dst, rows, n, n, used); }
  static void store(C* rows, int64_t n, const E* src, int used) { L::store(rows, n, src, n, used); }
};

template <typename C>
struct RowLanes<C, true> {
  using R = typename C::value_type;
  using L = CpuLanes<R, MMM_CPU_VECTOR_BYTES>;
  using E = typename L::Complex;
  static constexpr int kLanes = L::kLanes;
  static E mul(C t, E a) {
    const typename L::V tr = L::splat(t.real()), ti = L::splat(t.imag());
    return E{tr * a.re - ti * a.im, tr * a.im + ti * a.re};
  }
  static E add(E a, E b) { return E{a.re + b.re, a.im + b.im}; }
  static E mul_conj(E d, E a) { return E{d.re * a.re + d.im * a.im, d.im * a.re - d.re * a.im}; }
  static C lane(const E& e, int l) { return C(e.re[l], e.im[l]); }
  static void load(E* dst, const C* rows, int64_t n, int used) {
    L::load_complex(dst, reinterpret_cast<const R*>(rows), 2 * n, n, used);
  }
  static void store(C* rows, int64_t n, const E* src, int used) {
    L::store_complex(reinterpret_cast<R*>(rows), 2 * n, src, nullptr, n, used, R(1));
  }
};

// Per-thread buffers of the lanes backward past this fall back to one row at a time.
constexpr int64_t kLanesMaxBytes = int64_t(32) << 20;

// out <- B in for one factor of stride 2^s (planar twiddles t; out may be in).
template <typename C>
void apply_factor_lanes(const typename RowLanes<C>::E* in, typename RowLanes<C>::E* out, const C* __restrict t,
                        int64_t n, int s) {
  using O = RowLanes<C>;
  const int64_t h = n / 2, S = int64_t(1) << s;
  const C *t00 = t, *t01 = t + h, *t10 = t + 2 * h, *t11 = t + 3 * h;
  for (int64_t k = 0; k < n / (2 * S); ++k) {
    const int64_t lo = k * 2 * S, p0 = k * S;
    for (int64_t q = 0; q < S; ++q) {
      const typename O::E a = in[lo + q], b = in[lo + S + q];
      out[lo + q] = O::add(O::mul(t00[p0 + q], a), O::mul(t01[p0 + q], b));
      out[lo + S + q] = O::add(O::mul(t10[p0 + q], a), O::mul(t11[p0 + q], b));
    }
  }
}

// backward_factor on lanes: g (planar lane vectors, like t) += the twiddle gradient of every lane.
template <typename C>
void backward_factor_lanes(typename RowLanes<C>::E* __restrict d, const typename RowLanes<C>::E* __restrict v,
                           const C* __restrict t, typename RowLanes<C>::E* __restrict g, int64_t n, int s) {
  using O = RowLanes<C>;
  using E = typename O::E;
  const int64_t h = n / 2, S = int64_t(1) << s;
  const C *t00 = t, *t01 = t + h, *t10 = t + 2 * h, *t11 = t + 3 * h;
  E *g00 = g, *g01 = g + h, *g10 = g + 2 * h, *g11 = g + 3 * h;
  for (int64_t k = 0; k < n / (2 * S); ++k) {
    const int64_t lo = k * 2 * S, p0 = k * S;
    for (int64_t q = 0; q < S; ++q) {
      const int64_t pq = p0 + q;
      const E a = v[lo + q], b = v[lo + S + q], da = d[lo + q], db = d[lo + S + q];
      g00[pq] = O::add(g00[pq], O::mul_conj(da, a));
      g01[pq] = O::add(g01[pq], O::mul_conj(da, b));
      g10[pq] = O::add(g10[pq], O::mul_conj(db, a));
      g11[pq] = O::add(g11[pq], O::mul_conj(db, b));
      d[lo + q] = O::add(O::mul(conj_(t00[pq]), da), O::mul(conj_(t10[pq]), db));
      d[lo + S + q] = O::add(O::mul(conj_(t01[pq]), da), O::mul(conj_(t11[pq]), db));
    }
  }
}

// Rows b0 .. b0 + used - 1 of stack s (row r = b * nstacks + s) from `base` (row stride rs
// elements of dtype t, len of them read, zero padded to n) into lanes, through `rows`.
template <typename C>
void load_lanes(typename RowLanes<C>::E* dst, C* rows, const void* base, DType t, int64_t rs, const ButterflyParams& p,
                int64_t b0, int64_t s, int used, int64_t len) {
  const int64_t eb = elem_bytes(t);
  for (int l = 0; l < used; ++l)
    load_row(rows + l * p.n, static_cast<const char*>(base) + ((b0 + l) * p.nstacks + s) * rs * eb, t, len, p.n);
  RowLanes<C>::load(dst, rows, p.n, used);
}

template <typename C>
void store_lanes(void* base, DType t, int64_t rs, const typename RowLanes<C>::E* src, C* rows,
                 const ButterflyParams& p, int64_t b0, int64_t s, int used, int64_t len) {
  const int64_t eb = elem_bytes(t);
  RowLanes<C>::store(rows, p.n, src, used);
  for (int l = 0; l < used; ++l)
    store_row(static_cast<char*>(base) + ((b0 + l) * p.nstacks + s) * rs * eb, t, rows + l * p.n, len);
}

// Tasks g * nstacks + s: batch rows [g kLanes, g kLanes + kLanes) of stack s.
template <typename C>
void forward_lanes(const ButterflyParams& p, const CpuParallelFor& pf) {
  using O = RowLanes<C>;
  const std::vector<C> tw = planar_twiddles<C>(p);
  const int64_t n = p.n, nL = p.factors(), groups = ceil_div(p.batch, O::kLanes);
  const int64_t grain = std::max<int64_t>(1, 65536 / (n * nL * O::kLanes));
  pf(0, groups * p.nstacks, grain, [&](int64_t t0, int64_t t1) {
    typename O::L::template Buffer<typename O::E> buf(n);
    std::vector<C> rows(size_t(O::kLanes * n));
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t s = task % p.nstacks, b0 = task / p.nstacks * O::kLanes;
      const int used = int(std::min<int64_t>(O::kLanes, p.batch - b0));
      load_lanes<C>(buf.data, rows.data(), p.x, p.x_dtype, p.x_row_stride, p, b0, s, used, p.n_read());
      for (int64_t f = 0; f < nL; ++f)
        apply_factor_lanes<C>(buf.data, buf.data, tw.data() + (s * nL + f) * 2 * n, n, p.stride_log2(f));
      store_lanes<C>(p.y, p.x_dtype, n, buf.data, rows.data(), p, b0, s, used, n);
    }
  });
}

template <typename C>
int64_t lanes_backward_bytes(const ButterflyParams& p) {
  // activations (L + 1 rows of lanes) + the dtwiddle accumulators (nstacks * L * 2n lanes)
  return ((p.factors() + 1) * p.n + p.nstacks * p.factors() * 2 * p.n) * int64_t(sizeof(typename RowLanes<C>::E));
}

// Fixed chunks of batch indices (every stack), each with its own dtwiddle partial, summed in
// chunk order: the reduction order depends on the shapes only.
template <typename C>
void backward_lanes(const ButterflyParams& p, const CpuParallelFor& pf) {
  using O = RowLanes<C>;
  using E = typename O::E;
  const std::vector<C> tw = planar_twiddles<C>(p);
  const int64_t n = p.n, nL = p.factors(), nr = p.n_read();
  const int64_t tw_elems = p.nstacks * nL * 2 * n;  // planar (nstacks, L, 4, n/2)
  // At least 4 vectors of rows a chunk: each chunk ends with a horizontal sum of its accumulators.
  const int64_t chunks = std::clamp<int64_t>(std::min<int64_t>(16, (int64_t(1) << 24) / tw_elems), 1,
                                             std::max<int64_t>(p.batch / (4 * O::kLanes), 1));
  std::vector<C> partial(size_t(chunks * tw_elems), C(0));
  pf(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    typename O::L::template Buffer<E> acts((nL + 1) * n), d(n), gacc(tw_elems);
    std::vector<C> rows(size_t(O::kLanes * n));
    for (int64_t c = c0; c < c1; ++c) {
      std::fill(gacc.data, gacc.data + tw_elems, E{});
      const int64_t bb = p.batch * c / chunks, be = p.batch * (c + 1) / chunks;
      for (int64_t s = 0; s < p.nstacks; ++s)
        for (int64_t b0 = bb; b0 < be; b0 += O::kLanes) {
          const int used = int(std::min<int64_t>(O::kLanes, be - b0));
          const C* t = tw.data() + s * nL * 2 * n;
          load_lanes<C>(acts.data, rows.data(), p.x, p.x_dtype, p.x_row_stride, p, b0, s, used, nr);
          for (int64_t f = 0; f < nL; ++f)
            apply_factor_lanes<C>(acts.data + f * n, acts.data + (f + 1) * n, t + f * 2 * n, n, p.stride_log2(f));
          load_lanes<C>(d.data, rows.data(), p.dy, p.x_dtype, p.dy_row_stride, p, b0, s, used, n);
          for (int64_t f = nL - 1; f >= 0; --f)
            backward_factor_lanes<C>(d.data, acts.data + f * n, t + f * 2 * n, gacc.data + (s * nL + f) * 2 * n, n,
                                     p.stride_log2(f));
          store_lanes<C>(p.dx, p.x_dtype, p.n_in, d.data, rows.data(), p, b0, s, used, nr);
        }
      C* g = partial.data() + c * tw_elems;
      for (int64_t i = 0; i < tw_elems; ++i) {
        C sum = C(0);
        for (int l = 0; l < O::kLanes; ++l) sum += O::lane(gacc.data[i], l);  // lanes past a group's rows are zero
        g[i] = sum;
      }
    }
  });
  store_dtwiddle(p, pf, partial, chunks);
}

// Lanes when a stack has at least half a vector of rows (fewer leave most lanes idle, and one row
// at a time vectorises the wide strides).
template <typename C>
bool use_lanes(const ButterflyParams& p) { return p.batch >= RowLanes<C>::kLanes / 2; }

template <typename C>
void forward_any(const ButterflyParams& p, const CpuParallelFor& pf) {
  if (use_lanes<C>(p)) forward_lanes<C>(p, pf);
  else forward<C>(p, pf);
}

template <typename C>
void backward_any(const ButterflyParams& p, const CpuParallelFor& pf) {
  if (use_lanes<C>(p) && lanes_backward_bytes<C>(p) <= kLanesMaxBytes) backward_lanes<C>(p, pf);
  else backward<C>(p, pf);
}

}  // namespace

inline void forward_cpu(const ButterflyParams& p, const CpuParallelFor& pf) {
  switch (p.x_dtype) {
    case DType::kFloat64: forward_any<double>(p, pf); break;
    case DType::kComplex64: forward_any<std::complex<float>>(p, pf); break;
    case DType::kComplex128: forward_any<std::complex<double>>(p, pf); break;
    default: forward_any<float>(p, pf); break;
  }
}

inline void backward_cpu(const ButterflyParams& p, const CpuParallelFor& pf) {
  switch (p.x_dtype) {
    case DType::kFloat64: backward_any<double>(p, pf); break;
    case DType::kComplex64: backward_any<std::complex<float>>(p, pf); break;
    case DType::kComplex128: backward_any<std::complex<double>>(p, pf); break;
    default: backward_any<float>(p, pf); break;
  }
}
