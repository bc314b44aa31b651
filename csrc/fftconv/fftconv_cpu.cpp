// fftconv on the CPU: the algorithm of the CUDA kernels, one row (b, h) at a time, on the shared
// FFT twins (core/fft_cpu.h). A row's real length-L signal is packed into L/2 complex numbers,
// transformed by an L/2-point complex FFT and unpacked into the L/2 + 1 bins of its rfft;
// products with k's spectrum (computed once per call per channel) go back the same way. Arithmetic in fp32 (fp64 for fp64 inputs, so gradcheck sees
// a float64 function). The forward is parallel over rows; the backward over fixed (channel,
// batch-chunk) tasks whose dk / dbias partials are summed in chunk order, so the result does not
// depend on the thread count.
#include <algorithm>
#include <cmath>
#include <complex>
#include <type_traits>
#include <vector>

#include "core/numeric.h"
#include "core/fft_cpu.h"
#include "fftconv/params.h"

namespace mmm {
namespace {

template <typename C> using cplx = std::complex<C>;

template <typename C, typename T> inline C load(const T* p, int64_t i) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<C>(p[i]);
  else return static_cast<C>(to_float(p[i]));
}
template <typename T, typename C> inline void store(T* p, int64_t i, C v) {
  if constexpr (std::is_arithmetic_v<T>) p[i] = static_cast<T>(v);
  else p[i] = from_float<T>(static_cast<float>(v));
}

template <typename C> C load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32: return load<C>(static_cast<const float*>(p), i);
    case DType::kFloat64: return load<C>(static_cast<const double*>(p), i);
    case DType::kFloat16: return load<C>(static_cast<const Half*>(p), i);
    case DType::kBFloat16: return load<C>(static_cast<const BFloat16*>(p), i);
    default: return C(0);
  }
}
template <typename C> void store_any(void* p, DType t, int64_t i, C v) {
  switch (t) {
    case DType::kFloat32: store(static_cast<float*>(p), i, v); break;
    case DType::kFloat64: store(static_cast<double*>(p), i, v); break;
    case DType::kFloat16: store(static_cast<Half*>(p), i, v); break;
    case DType::kBFloat16: store(static_cast<BFloat16*>(p), i, v); break;
    default: break;
  }
}

// Element t of a row as seen by the transform: f(t) for t < n, 0 in the padding; packed as
// z[j] = f(2j) + i f(2j+1).
template <typename C, typename F> void pack(cplx<C>* z, int64_t half, int64_t n, F&& f) {
  const int64_t full = n / 2;  // pairs entirely inside the row
  for (int64_t j = 0; j < full; ++j) z[j] = cplx<C>(f(2 * j), f(2 * j + 1));
  if (n % 2) z[full] = cplx<C>(f(n - 1), C(0));
  for (int64_t j = (n + 1) / 2; j < half; ++j) z[j] = cplx<C>(0, 0);
}

// The CUDA kernels' algorithm (fftconv_kernel.cuh) on std::complex: a DIF FFT leaves Z in
// bit-reversed order; each bin pair (k, n-k) is unpacked to rfft bins / repacked from them in
// place of the permutation; a DIT inverse FFT takes the bit-reversed input back to natural order.
template <typename C> struct Plan {
  int log2n;
  int64_t n;
  const cplx<C>* w;          // W_L^k, k < n (fft_cpu's table for stage h = n)
  std::vector<int64_t> rev;  // bit reversal of [0, n)
  explicit Plan(int log2L) : log2n(log2L - 1), n(int64_t(1) << (log2L - 1)), w(fft_cpu::stage_twiddles<C>(log2L - 1)), rev(n) {
    for (int64_t i = 0; i < n; ++i) rev[i] = fft_cpu::bit_reverse(i, log2n);
  }
};

template <typename C> inline cplx<C> cmul(cplx<C> a, cplx<C> b) {  // no NaN/inf fix-up (__mulsc3)
  return cplx<C>(a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real());
}
template <typename C> inline cplx<C> mul_conj(cplx<C> a, cplx<C> b) {  // a * conj(b)
  return cplx<C>(a.real() * b.real() + a.imag() * b.imag(), a.imag() * b.real() - a.real() * b.imag());
}

// spec[0..n] = rfft(x, L) of the packed real signal in z (z is overwritten).
template <typename C> void forward(const Plan<C>& plan, cplx<C>* z, cplx<C>* spec) {
  const int64_t n = plan.n;
  fft_cpu::fft_dif(z, plan.log2n, false);
  spec[0] = cplx<C>(z[0].real() + z[0].imag(), 0);
  spec[n] = cplx<C>(z[0].real() - z[0].imag(), 0);
  for (int64_t k = 1; k <= n / 2; ++k) {
    const cplx<C> zk = z[plan.rev[k]], c = std::conj(z[plan.rev[n - k]]);
    const cplx<C> e((zk.real() + c.real()) / 2, (zk.imag() + c.imag()) / 2);
    const cplx<C> o((zk.imag() - c.imag()) / 2, -(zk.real() - c.real()) / 2);  // (zk - c) / 2i
    const cplx<C> wo = cmul(plan.w[k], o);
    spec[k] = e + wo;
    spec[n - k] = std::conj(e - wo);
  }
}

// z = L * the packed irfft(spec, L) (natural order).
template <typename C> void inverse(const Plan<C>& plan, const cplx<C>* spec, cplx<C>* z) {
  const int64_t n = plan.n;
  z[0] = cplx<C>(spec[0].real() + spec[n].real(), spec[0].real() - spec[n].real());
  for (int64_t k = 1; k <= n / 2; ++k) {
    const cplx<C> yk = spec[k], c = std::conj(spec[n - k]);
    const cplx<C> s = yk + c, d = cmul(yk - c, std::conj(plan.w[k]));
    z[plan.rev[k]] = cplx<C>(s.real() - d.imag(), s.imag() + d.real());
    z[plan.rev[n - k]] = cplx<C>(s.real() + d.imag(), -s.imag() + d.real());  // k = n/2: the same value
  }
  fft_cpu::fft_dit(z, plan.log2n, true);
}

template <typename C> inline C unpack(const cplx<C>* z, int64_t t) { return t % 2 ? z[t / 2].imag() : z[t / 2].real(); }

template <typename C, typename TK>
void kspec_impl(const FFTConvParams& p, cplx<C>* kspec, int64_t h0, int64_t h1) {
  const Plan<C> plan(p.log2_fft);
  const int64_t half = p.half(), n = p.n;
  std::vector<cplx<C>> z(half);
  const TK* k = static_cast<const TK*>(p.k);
  for (int64_t h = h0; h < h1; ++h) {
    const TK* kr = k + h * p.k_rs;
    pack<C>(z.data(), half, n, [&](int64_t t) { return load<C>(kr, t); });
    forward(plan, z.data(), kspec + h * (half + 1));
  }
}

template <typename T, typename C>
void fwd_impl(const FFTConvParams& p, const cplx<C>* kspec, int64_t r0, int64_t r1) {
  const Plan<C> plan(p.log2_fft);
  const int64_t half = p.half(), n = p.n, H = p.channels;
  const C inv = C(1) / C(p.fft_len());
  std::vector<cplx<C>> z(half), spec(half + 1);
  const T* u = static_cast<const T*>(p.u);
  const T* pre = static_cast<const T*>(p.pregate);
  const T* post = static_cast<const T*>(p.postgate);
  T* y = static_cast<T*>(p.y);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t h = r % H;
    const T* ur = u + r * p.u_rs;
    const T* pr = pre ? pre + r * p.pre_rs : nullptr;
    if (pr) pack<C>(z.data(), half, n, [&](int64_t t) { return load<C>(pr, t) * load<C>(ur, t); });
    else pack<C>(z.data(), half, n, [&](int64_t t) { return load<C>(ur, t); });
    forward(plan, z.data(), spec.data());
    const cplx<C>* ks = kspec + h * (half + 1);
    for (int64_t j = 0; j <= half; ++j) spec[j] = cmul(spec[j], ks[j]);
    inverse(plan, spec.data(), z.data());
    const C bias = p.bias ? load_any<C>(p.bias, p.bias_dtype, h) : C(0);
    const T* qr = post ? post + r * p.post_rs : nullptr;
    T* yr = y + r * n;
    for (int64_t t = 0; t < n; ++t) {
      C v = unpack(z.data(), t) * inv + bias * load<C>(ur, t);
      if (qr) v *= load<C>(qr, t);
      store(yr, t, v);
    }
  }
}

int64_t bwd_chunks(const FFTConvBwdParams& p) {
  if (p.batch == 0) return 0;
  // Enough tasks for a many-core machine even when channels are few; fixed by the shapes only.
  return std::min<int64_t>(p.batch, std::max<int64_t>(1, ceil_div(64, p.channels)));
}

template <typename C> struct BwdWorkspace {
  cplx<C>* dk;  // (channels, chunks, half + 1)
  C* dbias;     // (channels, chunks)
  BwdWorkspace(const FFTConvBwdParams& p, void* ws) {
    const int64_t slots = p.channels * bwd_chunks(p);
    dk = static_cast<cplx<C>*>(ws);
    dbias = reinterpret_cast<C*>(dk + (p.dk ? slots * (p.half() + 1) : 0));
  }
};

template <typename T, typename C>
void bwd_task(const FFTConvBwdParams& p, const cplx<C>* kspec, void* ws, int64_t task) {
  const Plan<C> plan(p.log2_fft);
  const int64_t half = p.half(), n = p.n, H = p.channels, chunks = bwd_chunks(p);
  const int64_t h = task / chunks, c = task % chunks;
  const int64_t b0 = c * p.batch / chunks, b1 = (c + 1) * p.batch / chunks;
  const C inv = C(1) / C(p.fft_len());
  const bool need_v = p.dk || p.dpostgate, need_dv = p.du || p.dpregate;
  std::vector<cplx<C>> z(half), gs(half + 1), vs(half + 1), tmp(half + 1);
  std::vector<C> g(n);
  BwdWorkspace<C> w(p, ws);
  cplx<C>* dk_acc = p.dk ? w.dk + (h * chunks + c) * (half + 1) : nullptr;
  if (dk_acc) std::fill(dk_acc, dk_acc + half + 1, cplx<C>(0, 0));
  double dbias_acc = 0;  // a long sum of products that may cancel: double, cheap next to the FFTs
  const cplx<C>* ks = kspec + h * (half + 1);
  const C bias = p.bias ? load_any<C>(p.bias, p.bias_dtype, h) : C(0);
  const T* u = static_cast<const T*>(p.u);
  const T* pre = static_cast<const T*>(p.pregate);
  const T* post = static_cast<const T*>(p.postgate);
  const T* dy = static_cast<const T*>(p.dy);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t r = b * H + h;
    const T* ur = u + r * p.u_rs;
    const T* pr = pre ? pre + r * p.pre_rs : nullptr;
    const T* qr = post ? post + r * p.post_rs : nullptr;
    const T* dyr = dy + r * p.dy_rs;
    for (int64_t t = 0; t < n; ++t) g[t] = qr ? load<C>(dyr, t) * load<C>(qr, t) : load<C>(dyr, t);
    if (p.dbias) {
      for (int64_t t = 0; t < n; ++t) dbias_acc += double(g[t]) * double(load<C>(ur, t));
    }
    pack<C>(z.data(), half, n, [&](int64_t t) { return g[t]; });
    forward(plan, z.data(), gs.data());
    if (need_v) {
      if (pr) pack<C>(z.data(), half, n, [&](int64_t t) { return load<C>(pr, t) * load<C>(ur, t); });
      else pack<C>(z.data(), half, n, [&](int64_t t) { return load<C>(ur, t); });
      forward(plan, z.data(), vs.data());
    }
    if (dk_acc)
      for (int64_t j = 0; j <= half; ++j) dk_acc[j] += mul_conj(gs[j], vs[j]);
    if (need_dv) {
      for (int64_t j = 0; j <= half; ++j) tmp[j] = mul_conj(gs[j], ks[j]);
      inverse(plan, tmp.data(), z.data());
      T* dur = p.du ? static_cast<T*>(p.du) + r * n : nullptr;
      T* dpr = p.dpregate ? static_cast<T*>(p.dpregate) + r * n : nullptr;
      for (int64_t t = 0; t < n; ++t) {
        const C dv = unpack(z.data(), t) * inv;
        if (dur) store(dur, t, (pr ? load<C>(pr, t) * dv : dv) + bias * g[t]);
        if (dpr) store(dpr, t, load<C>(ur, t) * dv);
      }
    }
    if (p.dpostgate) {
      for (int64_t j = 0; j <= half; ++j) tmp[j] = cmul(vs[j], ks[j]);
      inverse(plan, tmp.data(), z.data());
      T* dqr = static_cast<T*>(p.dpostgate) + r * n;
      for (int64_t t = 0; t < n; ++t)
        store(dqr, t, load<C>(dyr, t) * (unpack(z.data(), t) * inv + bias * load<C>(ur, t)));
    }
  }
  if (p.dbias) w.dbias[h * chunks + c] = C(dbias_acc);
}

template <typename C>
void bwd_finalize(const FFTConvBwdParams& p, void* ws, int64_t h0, int64_t h1) {
  const Plan<C> plan(p.log2_fft);
  const int64_t half = p.half(), n = p.n, chunks = bwd_chunks(p);
  const C inv = C(1) / C(p.fft_len());
  BwdWorkspace<C> w(p, ws);
  std::vector<cplx<C>> acc(half + 1), z(half);
  for (int64_t h = h0; h < h1; ++h) {
    if (p.dbias) {
      double s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += double(w.dbias[h * chunks + c]);
      store_any(p.dbias, p.bias_dtype, h, C(s));
    }
    if (!p.dk) continue;
    std::fill(acc.begin(), acc.end(), cplx<C>(0, 0));
    for (int64_t c = 0; c < chunks; ++c) {
      const cplx<C>* part = w.dk + (h * chunks + c) * (half + 1);
      for (int64_t j = 0; j <= half; ++j) acc[j] += part[j];
    }
    inverse(plan, acc.data(), z.data());
    for (int64_t t = 0; t < n; ++t) store_any(p.dk, p.k_dtype, h * n + t, unpack(z.data(), t) * inv);
  }
}

bool is_f64(const FFTConvParams& p) { return p.dtype == DType::kFloat64; }

}  // namespace

size_t fftconv_cpu_kspec_bytes(const FFTConvParams& p) {
  return size_t(p.channels) * size_t(p.half() + 1) * 2 * (is_f64(p) ? sizeof(double) : sizeof(float));
}

void fftconv_kspec_cpu(const FFTConvParams& p, void* kspec, int64_t h0, int64_t h1) {
  if (is_f64(p)) {
    auto* ks = static_cast<cplx<double>*>(kspec);
    switch (p.k_dtype) {
      case DType::kFloat64: kspec_impl<double, double>(p, ks, h0, h1); break;
      case DType::kFloat32: kspec_impl<double, float>(p, ks, h0, h1); break;
      default: break;  // the glue allows only u's dtype or fp32
    }
    return;
  }
  auto* ks = static_cast<cplx<float>*>(kspec);
  switch (p.k_dtype) {
    case DType::kFloat32: kspec_impl<float, float>(p, ks, h0, h1); break;
    case DType::kFloat16: kspec_impl<float, Half>(p, ks, h0, h1); break;
    case DType::kBFloat16: kspec_impl<float, BFloat16>(p, ks, h0, h1); break;
    default: break;
  }
}

void fftconv_fwd_cpu(const FFTConvParams& p, const void* kspec, int64_t r0, int64_t r1) {
  const auto* kf = static_cast<const cplx<float>*>(kspec);
  switch (p.dtype) {
    case DType::kFloat32: fwd_impl<float, float>(p, kf, r0, r1); break;
    case DType::kFloat16: fwd_impl<Half, float>(p, kf, r0, r1); break;
    case DType::kBFloat16: fwd_impl<BFloat16, float>(p, kf, r0, r1); break;
    case DType::kFloat64: fwd_impl<double, double>(p, static_cast<const cplx<double>*>(kspec), r0, r1); break;
    default: break;
  }
}

int64_t fftconv_bwd_cpu_chunks(const FFTConvBwdParams& p) { return bwd_chunks(p); }

size_t fftconv_bwd_cpu_workspace_bytes(const FFTConvBwdParams& p) {
  const size_t slots = size_t(p.channels) * size_t(bwd_chunks(p));
  const size_t real = is_f64(p) ? sizeof(double) : sizeof(float);
  return ((p.dk ? slots * size_t(p.half() + 1) * 2 : 0) + (p.dbias ? slots : 0)) * real;
}

void fftconv_bwd_cpu_task(const FFTConvBwdParams& p, const void* kspec, void* ws, int64_t task) {
  const auto* kf = static_cast<const cplx<float>*>(kspec);
  switch (p.dtype) {
    case DType::kFloat32: bwd_task<float, float>(p, kf, ws, task); break;
    case DType::kFloat16: bwd_task<Half, float>(p, kf, ws, task); break;
    case DType::kBFloat16: bwd_task<BFloat16, float>(p, kf, ws, task); break;
    case DType::kFloat64: bwd_task<double, double>(p, static_cast<const cplx<double>*>(kspec), ws, task); break;
    default: break;
  }
}

void fftconv_bwd_cpu_finalize(const FFTConvBwdParams& p, void* ws, int64_t h0, int64_t h1) {
  if (is_f64(p)) bwd_finalize<double>(p, ws, h0, h1);
  else bwd_finalize<float>(p, ws, h0, h1);
}

}  // namespace mmm
