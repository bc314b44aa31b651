// butterfly_multiply on the CPU: the CUDA kernels' twin, one row at a time in a compute-type
// buffer (fp32 for fp32/fp16/bf16 storage, fp64, complex64, complex128).
//
// The twiddles are first converted to the compute type in a planar layout (stack, factor, ij, p),
// so that the inner loop of a factor (over q < stride, consecutive pairs) reads four contiguous
// twiddle streams and two contiguous halves of the row: it vectorises for strides >= the SIMD width.
// Backward stores the L+1 intermediate rows of the row it is working on (CPU memory is cheap; the
// CUDA kernels recompute instead) and accumulates dtwiddle per fixed chunk of rows.
#include <algorithm>
#include <complex>
#include <type_traits>
#include <vector>

#include "butterfly/params.h"
#include "core/numeric.h"

namespace mmm {
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
      case DType::kFloat16: return C(to_float(static_cast<const Half*>(base)[i]));
      case DType::kBFloat16: return C(to_float(static_cast<const BFloat16*>(base)[i]));
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
      case DType::kFloat16: static_cast<Half*>(base)[i] = from_float<Half>(float(v)); break;
      case DType::kBFloat16: static_cast<BFloat16*>(base)[i] = from_float<BFloat16>(float(v)); break;
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
  // dtwiddle[s, f, q, ij] = sum over chunks, in chunk order.
  const int64_t h = n / 2, mats = p.nstacks * L;
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

}  // namespace

void butterfly_forward_cpu(const ButterflyParams& p, const CpuParallelFor& pf) {
  switch (p.x_dtype) {
    case DType::kFloat64: forward<double>(p, pf); break;
    case DType::kComplex64: forward<std::complex<float>>(p, pf); break;
    case DType::kComplex128: forward<std::complex<double>>(p, pf); break;
    default: forward<float>(p, pf); break;
  }
}

void butterfly_backward_cpu(const ButterflyParams& p, const CpuParallelFor& pf) {
  switch (p.x_dtype) {
    case DType::kFloat64: backward<double>(p, pf); break;
    case DType::kComplex64: backward<std::complex<float>>(p, pf); break;
    case DType::kComplex128: backward<std::complex<double>>(p, pf); break;
    default: backward<float>(p, pf); break;
  }
}

}  // namespace mmm
