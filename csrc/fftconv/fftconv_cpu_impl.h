// fftconv's CPU algorithm, compiled once per instruction set by fftconv_cpu.cpp (inside namespace
// mmm::<isa>; no include guard, no includes on purpose).
//
// The CUDA kernels' algorithm on core/fft_cpu_lanes.h: a vector of channels at a time, one per
// lane. Each channel's real length-L signal (its n samples, zero padded) is packed into L/2
// complex numbers, transformed by the L/2-point DIF and unpacked into its L/2 + 1 rfft bins; the
// products with k's spectrum go back the same way. Rows move between memory and the lanes through
// a scratch of one fp32 (fp64) row per lane, where the gates, the dtype conversions and the bias
// are applied. k's spectrum is kept in the lanes' own layout (ConvLanes::kspec), so a task of
// kFftconvCpuChannels channels multiplies by it with no transposition.

#include "core/fft_cpu_lanes.h"

namespace {

template <typename C, typename T>
inline C load(const T* p, int64_t i) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<C>(p[i]);
  else return static_cast<C>(widen(p[i]));
}
template <typename T, typename C>
inline void store(T* p, int64_t i, C v) {
  if constexpr (std::is_arithmetic_v<T>) p[i] = static_cast<T>(v);
  else p[i] = narrow<T>(static_cast<float>(v));
}

template <typename C>
C load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32: return load<C>(static_cast<const float*>(p), i);
    case DType::kFloat64: return load<C>(static_cast<const double*>(p), i);
    case DType::kFloat16: return load<C>(static_cast<const Half*>(p), i);
    case DType::kBFloat16: return load<C>(static_cast<const BFloat16*>(p), i);
    default: return C(0);
  }
}
template <typename C>
void store_any(void* p, DType t, int64_t i, C v) {
  switch (t) {
    case DType::kFloat32: store(static_cast<float*>(p), i, v); break;
    case DType::kFloat64: store(static_cast<double*>(p), i, v); break;
    case DType::kFloat16: store(static_cast<Half*>(p), i, v); break;
    case DType::kBFloat16: store(static_cast<BFloat16*>(p), i, v); break;
    default: break;
  }
}

// One thread's transforms for channels h0 .. h0 + used - 1 (used <= kLanes), arithmetic in C.
template <typename C>
struct ConvLanes {
  using L = FftLanes<C, MMM_CPU_VECTOR_BYTES>;
  using V = typename L::V;
  using Point = typename L::Point;
  static constexpr int kLanes = L::kLanes;
  static constexpr int kSubgroups = int(kFftconvCpuChannels) / kLanes;  // lane groups a task

  const int log2n;       // complex FFT size half = L/2 = 2^log2n
  const int64_t half, n;
  const int64_t n2;      // n rounded up to even: the reals of a scratch row
  typename L::Buffer z;  // half + 1 points: the transforms' work space
  std::vector<C> rows;   // kLanes scratch rows of n2 reals (zero past n)

  explicit ConvLanes(const FFTConvParams& p)
      : log2n(p.log2_fft - 1), half(p.half()), n(p.n), n2(p.n + p.n % 2), z(half + 1), rows(size_t(kLanes * n2)) {}

  C* row(int l) { return rows.data() + l * n2; }
  // A spectrum of half + 1 points.
  typename L::Buffer spectrum() const { return typename L::Buffer(half + 1); }

  static Point mul(const Point& x, const Point& y) { return Point{x.re * y.re - x.im * y.im, x.re * y.im + x.im * y.re}; }
  static Point mul_conj(const Point& x, const Point& y) {  // x conj(y)
    return Point{x.re * y.re + x.im * y.im, x.im * y.re - x.re * y.im};
  }

  // k's spectrum for the lane group of channel h0 (a multiple of kLanes): half + 1 points.
  static Point* kspec(void* base, int64_t half, int64_t h0) { return static_cast<Point*>(base) + h0 / kLanes * (half + 1); }
  static const Point* kspec(const void* base, int64_t half, int64_t h0) {
    return static_cast<const Point*>(base) + h0 / kLanes * (half + 1);
  }

  // out[0..half] = rfft(src rows, L) (row l at src + l * n2; lanes >= used zero).
  void rfft(const C* src, int used, Point* out) {
    L::load_complex(z.data, src, n2, n2 / 2, used);
    std::fill(z.data + n2 / 2, z.data + half, Point{});
    L::dif(z.data, log2n, false);
    L::rfft_post(z.data, log2n, out);
  }
  // rows = scale * irfft(in, L)[:n2].
  void irfft(const Point* in, int used, C scale) {
    L::irfft_pre(in, log2n, z.data);
    L::dif(z.data, log2n, true);
    L::store_complex(rows.data(), n2, z.data, fft_cpu::bit_reverse_table(log2n), n2 / 2, used, scale);
  }
  // Row l = f(l, t) for t < n (and 0 at n when n is odd).
  template <typename F>
  void fill_rows(int used, F&& f) {
    for (int l = 0; l < used; ++l) {
      C* r = row(l);
      for (int64_t t = 0; t < n; ++t) r[t] = f(l, t);
      if (n2 > n) r[n] = C(0);
    }
  }
};

template <typename C, typename TK>
void kspec_impl(const FFTConvParams& p, void* kspec, int64_t g0, int64_t g1) {
  using W = ConvLanes<C>;
  W w(p);
  const TK* k = static_cast<const TK*>(p.k);
  for (int64_t g = g0; g < g1; ++g)
    for (int s = 0; s < W::kSubgroups; ++s) {
      const int64_t h0 = g * kFftconvCpuChannels + s * W::kLanes;
      const int used = int(std::clamp<int64_t>(p.channels - h0, 0, W::kLanes));
      // Lanes of channels past the last are zero: a task's multiply reads them.
      w.fill_rows(used, [&](int l, int64_t t) { return load<C>(k + (h0 + l) * p.k_rs, t); });
      w.rfft(w.rows.data(), used, W::kspec(kspec, p.half(), h0));
    }
}

// Task b * groups + g: batch row b, channels [16g, 16g + 16).
template <typename T, typename C>
void fwd_impl(const FFTConvParams& p, const void* kspec, int64_t task0, int64_t task1) {
  using W = ConvLanes<C>;
  using Point = typename W::Point;
  W w(p);
  const int64_t groups = fftconv_cpu_groups(p), H = p.channels, n = p.n, half = p.half();
  const C inv = C(1) / C(p.fft_len());
  const T* u = static_cast<const T*>(p.u);
  const T* pre = static_cast<const T*>(p.pregate);
  const T* post = static_cast<const T*>(p.postgate);
  T* y = static_cast<T*>(p.y);
  const auto spec_buf = w.spectrum();
  Point* spec = spec_buf.data;
  for (int64_t task = task0; task < task1; ++task) {
    const int64_t bi = task / groups, g = task % groups;
    for (int s = 0; s < W::kSubgroups; ++s) {
      const int64_t h0 = g * kFftconvCpuChannels + s * W::kLanes;
      if (h0 >= H) break;
      const int used = int(std::min<int64_t>(H - h0, W::kLanes));
      const int64_t r0 = bi * H + h0;
      if (pre)
        w.fill_rows(used, [&](int l, int64_t t) {
          return load<C>(pre + (r0 + l) * p.pre_rs, t) * load<C>(u + (r0 + l) * p.u_rs, t);
        });
      else w.fill_rows(used, [&](int l, int64_t t) { return load<C>(u + (r0 + l) * p.u_rs, t); });
      w.rfft(w.rows.data(), used, spec);
      const Point* ks = W::kspec(kspec, half, h0);
      for (int64_t j = 0; j <= half; ++j) spec[j] = W::mul(spec[j], ks[j]);
      w.irfft(spec, used, inv);
      for (int l = 0; l < used; ++l) {
        const int64_t r = r0 + l;
        const C bias = p.bias ? load_any<C>(p.bias, p.bias_dtype, h0 + l) : C(0);
        const C* z = w.row(l);
        const T* ur = u + r * p.u_rs;
        const T* qr = post ? post + r * p.post_rs : nullptr;
        T* yr = y + r * n;
        for (int64_t t = 0; t < n; ++t) {
          C v = z[t] + bias * load<C>(ur, t);
          if (qr) v *= load<C>(qr, t);
          store(yr, t, v);
        }
      }
    }
  }
}

// Per task (g, c): dk partial spectra for the task's channels, in the lanes' layout (kSubgroups
// runs of half + 1 points), then one dbias partial per channel.
template <typename C>
struct BwdWorkspace {
  using Point = typename ConvLanes<C>::Point;
  Point* dk;  // (tasks, kSubgroups, half + 1)
  C* dbias;   // (tasks, kFftconvCpuChannels)
  BwdWorkspace(const FFTConvBwdParams& p, void* ws) {
    const int64_t tasks = fftconv_cpu_groups(p) * bwd_chunks(p);
    dk = static_cast<Point*>(ws);
    dbias = reinterpret_cast<C*>(dk + (p.dk ? tasks * ConvLanes<C>::kSubgroups * (p.half() + 1) : 0));
  }
};

template <typename T, typename C>
void bwd_task(const FFTConvBwdParams& p, const void* kspec, void* ws, int64_t task) {
  using W = ConvLanes<C>;
  using Point = typename W::Point;
  W w(p);
  const int64_t half = p.half(), n = p.n, H = p.channels, chunks = bwd_chunks(p);
  const int64_t g = task / chunks, c = task % chunks;
  const int64_t b0 = c * p.batch / chunks, b1 = (c + 1) * p.batch / chunks;
  const C inv = C(1) / C(p.fft_len());
  const bool need_v = p.dk || p.dpostgate, need_dv = p.du || p.dpregate;
  std::vector<C> grows(size_t(W::kLanes * w.n2));  // g = dy * postgate, one row per lane
  const auto gs_buf = w.spectrum(), vs_buf = w.spectrum(), tmp_buf = w.spectrum();
  Point *gs = gs_buf.data, *vs = vs_buf.data, *tmp = tmp_buf.data;
  BwdWorkspace<C> bw(p, ws);
  const T* u = static_cast<const T*>(p.u);
  const T* pre = static_cast<const T*>(p.pregate);
  const T* post = static_cast<const T*>(p.postgate);
  const T* dy = static_cast<const T*>(p.dy);
  for (int s = 0; s < W::kSubgroups; ++s) {
    const int64_t h0 = g * kFftconvCpuChannels + s * W::kLanes;
    const int used = int(std::clamp<int64_t>(H - h0, 0, W::kLanes));
    Point* dk_acc = p.dk ? bw.dk + (task * W::kSubgroups + s) * (half + 1) : nullptr;
    if (dk_acc) std::fill(dk_acc, dk_acc + half + 1, Point{});
    double dbias_acc[W::kLanes] = {};  // long sums of products that may cancel: double, cheap next to the FFTs
    if (used == 0) continue;
    const Point* ks = W::kspec(kspec, half, h0);
    C bias[W::kLanes];
    for (int l = 0; l < used; ++l) bias[l] = p.bias ? load_any<C>(p.bias, p.bias_dtype, h0 + l) : C(0);
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t r0 = bi * H + h0;
      for (int l = 0; l < used; ++l) {
        const int64_t r = r0 + l;
        C* gr = grows.data() + l * w.n2;
        const T* dyr = dy + r * p.dy_rs;
        const T* qr = post ? post + r * p.post_rs : nullptr;
        for (int64_t t = 0; t < n; ++t) gr[t] = qr ? load<C>(dyr, t) * load<C>(qr, t) : load<C>(dyr, t);
        if (w.n2 > n) gr[n] = C(0);
        if (p.dbias) {
          const T* ur = u + r * p.u_rs;
          for (int64_t t = 0; t < n; ++t) dbias_acc[l] += double(gr[t]) * double(load<C>(ur, t));
        }
      }
      w.rfft(grows.data(), used, gs);
      if (need_v) {
        if (pre)
          w.fill_rows(used, [&](int l, int64_t t) {
            return load<C>(pre + (r0 + l) * p.pre_rs, t) * load<C>(u + (r0 + l) * p.u_rs, t);
          });
        else w.fill_rows(used, [&](int l, int64_t t) { return load<C>(u + (r0 + l) * p.u_rs, t); });
        w.rfft(w.rows.data(), used, vs);
      }
      if (dk_acc)
        for (int64_t j = 0; j <= half; ++j) {
          const Point d = W::mul_conj(gs[j], vs[j]);
          dk_acc[j] = Point{dk_acc[j].re + d.re, dk_acc[j].im + d.im};
        }
      if (need_dv) {
        for (int64_t j = 0; j <= half; ++j) tmp[j] = W::mul_conj(gs[j], ks[j]);
        w.irfft(tmp, used, inv);
        for (int l = 0; l < used; ++l) {
          const int64_t r = r0 + l;
          const C* dv = w.row(l);
          const C* gr = grows.data() + l * w.n2;
          const T* ur = u + r * p.u_rs;
          const T* pr = pre ? pre + r * p.pre_rs : nullptr;
          T* dur = p.du ? static_cast<T*>(p.du) + r * n : nullptr;
          T* dpr = p.dpregate ? static_cast<T*>(p.dpregate) + r * n : nullptr;
          for (int64_t t = 0; t < n; ++t) {
            if (dur) store(dur, t, (pr ? load<C>(pr, t) * dv[t] : dv[t]) + bias[l] * gr[t]);
            if (dpr) store(dpr, t, load<C>(ur, t) * dv[t]);
          }
        }
      }
      if (p.dpostgate) {
        for (int64_t j = 0; j <= half; ++j) tmp[j] = W::mul(vs[j], ks[j]);
        w.irfft(tmp, used, inv);
        for (int l = 0; l < used; ++l) {
          const int64_t r = r0 + l;
          const C* zr = w.row(l);
          const T* ur = u + r * p.u_rs;
          const T* dyr = dy + r * p.dy_rs;
          T* dqr = static_cast<T*>(p.dpostgate) + r * n;
          for (int64_t t = 0; t < n; ++t) store(dqr, t, load<C>(dyr, t) * (zr[t] + bias[l] * load<C>(ur, t)));
        }
      }
    }
    if (p.dbias)
      for (int l = 0; l < used; ++l) bw.dbias[task * kFftconvCpuChannels + s * W::kLanes + l] = C(dbias_acc[l]);
  }
}

// Channel groups [g0, g1): the partials summed in chunk order, dk's spectrum transformed back.
template <typename C>
void bwd_finalize(const FFTConvBwdParams& p, void* ws, int64_t g0, int64_t g1) {
  using W = ConvLanes<C>;
  using Point = typename W::Point;
  W w(p);
  const int64_t half = p.half(), n = p.n, H = p.channels, chunks = bwd_chunks(p);
  const C inv = C(1) / C(p.fft_len());
  BwdWorkspace<C> bw(p, ws);
  const auto acc_buf = w.spectrum();
  Point* acc = acc_buf.data;
  for (int64_t g = g0; g < g1; ++g)
    for (int s = 0; s < W::kSubgroups; ++s) {
      const int64_t h0 = g * kFftconvCpuChannels + s * W::kLanes;
      if (h0 >= H) break;
      const int used = int(std::min<int64_t>(H - h0, W::kLanes));
      if (p.dbias)
        for (int l = 0; l < used; ++l) {
          double sum = 0;
          for (int64_t c = 0; c < chunks; ++c)
            sum += double(bw.dbias[(g * chunks + c) * kFftconvCpuChannels + s * W::kLanes + l]);
          store_any(p.dbias, p.bias_dtype, h0 + l, C(sum));
        }
      if (!p.dk) continue;
      std::fill(acc, acc + half + 1, Point{});
      for (int64_t c = 0; c < chunks; ++c) {
        const Point* part = bw.dk + ((g * chunks + c) * W::kSubgroups + s) * (half + 1);
        for (int64_t j = 0; j <= half; ++j) acc[j] = Point{acc[j].re + part[j].re, acc[j].im + part[j].im};
      }
      w.irfft(acc, used, inv);
      for (int l = 0; l < used; ++l)
        for (int64_t t = 0; t < n; ++t) store_any(p.dk, p.k_dtype, (h0 + l) * n + t, w.row(l)[t]);
    }
}

bool is_f64(const FFTConvParams& p) { return p.dtype == DType::kFloat64; }

}  // namespace

inline void kspec_cpu(const FFTConvParams& p, void* kspec, int64_t g0, int64_t g1) {
  if (is_f64(p)) {
    switch (p.k_dtype) {
      case DType::kFloat64: kspec_impl<double, double>(p, kspec, g0, g1); break;
      case DType::kFloat32: kspec_impl<double, float>(p, kspec, g0, g1); break;
      default: break;  // the glue allows only u's dtype or fp32
    }
    return;
  }
  switch (p.k_dtype) {
    case DType::kFloat32: kspec_impl<float, float>(p, kspec, g0, g1); break;
    case DType::kFloat16: kspec_impl<float, Half>(p, kspec, g0, g1); break;
    case DType::kBFloat16: kspec_impl<float, BFloat16>(p, kspec, g0, g1); break;
    default: break;
  }
}

inline void fwd_cpu(const FFTConvParams& p, const void* kspec, int64_t task0, int64_t task1) {
  switch (p.dtype) {
    case DType::kFloat32: fwd_impl<float, float>(p, kspec, task0, task1); break;
    case DType::kFloat16: fwd_impl<Half, float>(p, kspec, task0, task1); break;
    case DType::kBFloat16: fwd_impl<BFloat16, float>(p, kspec, task0, task1); break;
    case DType::kFloat64: fwd_impl<double, double>(p, kspec, task0, task1); break;
    default: break;
  }
}

inline void bwd_cpu_task(const FFTConvBwdParams& p, const void* kspec, void* ws, int64_t task) {
  switch (p.dtype) {
    case DType::kFloat32: bwd_task<float, float>(p, kspec, ws, task); break;
    case DType::kFloat16: bwd_task<Half, float>(p, kspec, ws, task); break;
    case DType::kBFloat16: bwd_task<BFloat16, float>(p, kspec, ws, task); break;
    case DType::kFloat64: bwd_task<double, double>(p, kspec, ws, task); break;
    default: break;
  }
}

inline void bwd_cpu_finalize(const FFTConvBwdParams& p, void* ws, int64_t g0, int64_t g1) {
  if (is_f64(p)) bwd_finalize<double>(p, ws, g0, g1);
  else bwd_finalize<float>(p, ws, g0, g1);
}
