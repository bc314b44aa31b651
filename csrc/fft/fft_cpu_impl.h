// The FFT's CPU algorithm, compiled once per instruction set by fft_cpu.cpp (inside namespace
// mmm::<isa>; no include guard, no includes on purpose).
//
// Rows go through core/fft_cpu_lanes.h a vector's worth at a time (a narrower vector for the last
// few rows of a range): each row is read into its lane, transformed by the DIF and written back
// through the bit-reversal table, scaled (real transforms: unpacked or packed on the way, by the
// formulas of core/fft_cpu.h's rfft_post / irfft_pre).

#include "core/fft_cpu_lanes.h"

namespace {

template <typename T, int kBytes>
struct FftRows {
  using L = FftLanes<T, kBytes>;
  using V = typename L::V;
  using Point = typename L::Point;
  using C = std::complex<T>;
  static constexpr int kLanes = L::kLanes;

  // Rows [r0, r0 + used), used <= kLanes; buf and out hold n + 1 points each.
  static void run(const FftParams& p, int64_t r0, int used, Point* buf, Point* out) {
    const int log2n = p.log2n;
    const int64_t n = int64_t(1) << log2n;
    const T scale = static_cast<T>(p.scale);
    const uint32_t* rev = fft_cpu::bit_reverse_table(log2n);
    const int64_t xs = 2 * p.x_row_stride, ys = 2 * p.y_row_stride;  // in reals
    switch (p.kind) {
      case FftKind::kC2C: {
        L::load(buf, static_cast<const T*>(p.x) + r0 * xs, xs, n, used);
        L::dif(buf, log2n, p.inverse);
        L::store(static_cast<T*>(p.y) + r0 * ys, ys, buf, rev, n, used, scale);
        break;
      }
      case FftKind::kR2C: {  // x, real, is read as n complex numbers a row
        L::load(buf, static_cast<const T*>(p.x) + r0 * p.x_row_stride, p.x_row_stride, n, used);
        L::dif(buf, log2n, false);
        // rfft_post from Z[k] = buf[rev[k]] and conj Z[n-k]: X[k] = E + W_N^k O,
        // X[n-k] = conj(E - W_N^k O); k = n/2 writes the same value twice.
        const C* wN = fft_cpu::stage_twiddles<T>(log2n);
        out[0] = Point{buf[0].re + buf[0].im, V{}};
        out[n] = Point{buf[0].re - buf[0].im, V{}};
        for (int64_t k = 1; k <= n / 2; ++k) {
          const Point zk = buf[rev[k]], zn = buf[rev[n - k]];  // zn conjugated below
          const V er = (zk.re + zn.re) * T(0.5), ei = (zk.im - zn.im) * T(0.5);
          const V orr = (zk.im + zn.im) * T(0.5), oi = (zn.re - zk.re) * T(0.5);  // (Z[k] - conj Z[n-k]) / 2i
          const V wr = L::splat(wN[k].real()), wi = L::splat(wN[k].imag());
          const V wor = wr * orr - wi * oi, woi = wr * oi + wi * orr;
          out[k] = Point{er + wor, ei + woi};
          out[n - k] = Point{er - wor, woi - ei};
        }
        L::store(static_cast<T*>(p.y) + r0 * ys, ys, out, nullptr, n + 1, used, scale);
        break;
      }
      case FftKind::kC2R: {  // y, real, is written as n complex numbers a row
        L::load(buf, static_cast<const T*>(p.x) + r0 * xs, xs, n + 1, used);
        // irfft_pre: Z'[k] = (X[k] + conj X[n-k]) + i conj(W_N^k) (X[k] - conj X[n-k]).
        const C* wN = fft_cpu::stage_twiddles<T>(log2n);
        const V a = buf[0].re, c = buf[n].re;
        buf[0] = Point{a + c, a - c};
        for (int64_t k = 1; k <= n / 2; ++k) {
          const Point xk = buf[k], xn = buf[n - k];  // xn conjugated below
          const V sr = xk.re + xn.re, si = xk.im - xn.im, er = xk.re - xn.re, ei = xk.im + xn.im;
          const V wr = L::splat(wN[k].real()), wi = L::splat(-wN[k].imag());
          const V dr = er * wr - ei * wi, di = er * wi + ei * wr;
          buf[k] = Point{sr - di, si + dr};
          buf[n - k] = Point{sr + di, dr - si};
        }
        L::dif(buf, log2n, true);
        L::store(static_cast<T*>(p.y) + r0 * p.y_row_stride, p.y_row_stride, buf, rev, n, used, scale);
        break;
      }
    }
  }
};

// A range of rows, a group of kBytes-wide lanes at a time; the last few rows (fewer than a full
// group) take the narrowest vector that holds them, down to 16 bytes.
template <typename T, int kBytes>
void run_range(const FftParams& p, int64_t r0, int64_t r1) {
  using R = FftRows<T, kBytes>;
  if constexpr (kBytes > 16) {
    if (r1 - r0 <= R::kLanes / 2) {
      run_range<T, kBytes / 2>(p, r0, r1);
      return;
    }
  }
  const int64_t points = (int64_t(1) << p.log2n) + 1;
  typename R::L::Buffer buf(points), out(p.kind == FftKind::kR2C ? points : 0);
  for (int64_t r = r0; r < r1; r += R::kLanes)
    R::run(p, r, int(std::min<int64_t>(R::kLanes, r1 - r)), buf.data, out.data);
}

template <typename T>
void run_rows(const FftParams& p, int64_t r0, int64_t r1) {
  using R = FftRows<T, MMM_CPU_VECTOR_BYTES>;
  const int64_t full = r0 + (r1 - r0) / R::kLanes * R::kLanes;
  if (full > r0) run_range<T, MMM_CPU_VECTOR_BYTES>(p, r0, full);
  if (r1 > full) run_range<T, MMM_CPU_VECTOR_BYTES>(p, full, r1);
}

}  // namespace

inline void fft_rows(const FftParams& p, int64_t row_begin, int64_t row_end) {
  if (p.fp64) run_rows<double>(p, row_begin, row_end);
  else run_rows<float>(p, row_begin, row_end);
}
