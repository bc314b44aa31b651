// The CPU FFT of the fft and fftconv ops: core/fft_cpu.h's DIF (natural order in, bit-reversed
// order out), run on a group of rows at once, one row per vector lane (core/cpu_lanes.h).
//
// Included INSIDE each per-ISA namespace of a CPU kernel (see fft/fft_cpu_impl.h), after
// core/fft_cpu.h, <cstring>, <type_traits>, <utility> and <vector>: so it has no include guard and
// no includes but core/cpu_lanes.h.
//
// A point of the group is {V re, V im}, so every butterfly of every stage is plain vertical
// arithmetic with broadcast twiddles at the full vector width (the per-row form needs shuffles for
// interleaved complex numbers and for the stages narrower than a vector, and ran at a third of
// torch.fft). Stages go two at a time (radix 4), so each pass over the data does twice the work;
// a block larger than kCacheBytes gets one radix-4 pass and then its four quarters are transformed
// one after the other (depth first, the recursion of a DIF), so the passes after the first run in
// cache whatever the length. The result equals the radix-2 stages' in exact arithmetic; the
// rounding differs.

#include "core/cpu_lanes.h"

template <typename T, int kBytes>
struct FftLanes : CpuLanes<T, kBytes> {
  using Lanes = CpuLanes<T, kBytes>;
  using V = typename Lanes::V;
  using Lanes::kLanes;
  using Lanes::splat;
  using Point = typename Lanes::Complex;
  using Buffer = typename Lanes::template Buffer<Point>;
  static constexpr int64_t kCacheBytes = int64_t(256) << 10;  // half of a 512 KB - 1 MB L2

  // Real signals (core/fft_cpu.h's rfft_post / irfft_pre, per lane). rfft_post: out[0..n] = the
  // rfft bins of the packed signal whose DIF is z (bit-reversed): X[k] = E + W_N^k O and
  // X[n-k] = conj(E - W_N^k O) from Z[k] = z[rev[k]] and conj Z[n-k] (k = n/2 writes one value twice).
  static void rfft_post(const Point* z, int log2n, Point* out) {
    const int64_t n = int64_t(1) << log2n;
    const uint32_t* rev = fft_cpu::bit_reverse_table(log2n);
    const std::complex<T>* wN = fft_cpu::stage_twiddles<T>(log2n);
    const Point z0 = z[0];
    out[0] = Point{z0.re + z0.im, V{}};
    out[n] = Point{z0.re - z0.im, V{}};
    for (int64_t k = 1; k <= n / 2; ++k) {
      const Point zk = z[rev[k]], zn = z[rev[n - k]];  // zn conjugated below
      const V er = (zk.re + zn.re) * T(0.5), ei = (zk.im - zn.im) * T(0.5);
      const V orr = (zk.im + zn.im) * T(0.5), oi = (zn.re - zk.re) * T(0.5);  // (Z[k] - conj Z[n-k]) / 2i
      const V wr = splat(wN[k].real()), wi = splat(wN[k].imag());
      const V wor = wr * orr - wi * oi, woi = wr * oi + wi * orr;
      out[k] = Point{er + wor, ei + woi};
      out[n - k] = Point{er - wor, woi - ei};
    }
  }

  // irfft_pre: z[0..n-1] = Z'[k] = (X[k] + conj X[n-k]) + i conj(W_N^k) (X[k] - conj X[n-k]) from
  // the bins x[0..n]; z may be x.
  static void irfft_pre(const Point* x, int log2n, Point* z) {
    const int64_t n = int64_t(1) << log2n;
    const std::complex<T>* wN = fft_cpu::stage_twiddles<T>(log2n);
    const V a = x[0].re, c = x[n].re;
    z[0] = Point{a + c, a - c};
    for (int64_t k = 1; k <= n / 2; ++k) {
      const Point xk = x[k], xn = x[n - k];  // xn conjugated below
      const V sr = xk.re + xn.re, si = xk.im - xn.im, er = xk.re - xn.re, ei = xk.im + xn.im;
      const V wr = splat(wN[k].real()), wi = splat(-wN[k].imag());
      const V dr = er * wr - ei * wi, di = er * wi + ei * wr;
      z[k] = Point{sr - di, si + dr};
      z[n - k] = Point{sr + di, dr - si};
    }
  }

  // Unnormalised DIF of the 2^log2m points at x, in place (x[p] = X[bit_reverse(p)]).
  template <bool kInverse>
  static void dif(Point* x, int log2m) {
    const int64_t m = int64_t(1) << log2m;
    if (log2m >= 2 && m * int64_t(sizeof(Point)) > kCacheBytes) {
      radix4_pass<kInverse>(x, m, log2m - 2);
      for (int s = 0; s < 4; ++s) dif<kInverse>(x + s * (m / 4), log2m - 2);
      return;
    }
    int l = log2m;
    for (; l >= 4; l -= 2) radix4_pass<kInverse>(x, m, l - 2);
    if (l == 3) {
      radix4_pass<kInverse>(x, m, 1);
      radix2_last(x, m);
    } else if (l == 2) {
      radix4_last<kInverse>(x, m);
    } else if (l == 1) {
      radix2_last(x, m);
    }
  }

  static void dif(Point* x, int log2m, bool inverse) {
    if (inverse) dif<true>(x, log2m);
    else dif<false>(x, log2m);
  }

 private:
  // The DIF stages h = 2q and h = q on each block of 4q points: for a_k = x[j + kq],
  //   x[j] = (a0 + a2) + (a1 + a3),            x[j + q]  = ((a0 + a2) - (a1 + a3)) W^2j,
  //   x[j + 2q] = ((a0 - a2) -+ i(a1 - a3)) W^j, x[j + 3q] = ((a0 - a2) +- i(a1 - a3)) W^3j,
  // W = W_4q (conjugated, and the signs of i swapped, for the inverse).
  template <bool kInverse>
  static void radix4_pass(Point* x, int64_t m, int log2q) {
    const int64_t q = int64_t(1) << log2q;
    const T* tw = fft_cpu::radix4_twiddles<T>(log2q);
    const T sg = kInverse ? T(-1) : T(1);
    for (int64_t b = 0; b < m; b += 4 * q) {
      Point* p = x + b;
      for (int64_t j = 0; j < q; ++j) {
        const Point a0 = p[j], a1 = p[j + q], a2 = p[j + 2 * q], a3 = p[j + 3 * q];
        const V s02r = a0.re + a2.re, s02i = a0.im + a2.im, d02r = a0.re - a2.re, d02i = a0.im - a2.im;
        const V s13r = a1.re + a3.re, s13i = a1.im + a3.im, d13r = a1.re - a3.re, d13i = a1.im - a3.im;
        // -i * d13 = (d13i, -d13r): forward x[j + 2q] takes it, the inverse x[j + 3q].
        const V mr = d02r + d13i, mi = d02i - d13r, pr = d02r - d13i, pi = d02i + d13r;
        const V t2r = kInverse ? pr : mr, t2i = kInverse ? pi : mi, t3r = kInverse ? mr : pr, t3i = kInverse ? mi : pi;
        const V t1r = s02r - s13r, t1i = s02i - s13i;
        const T* w = tw + 6 * j;
        const V w1r = splat(w[0]), w1i = splat(sg * w[1]), w2r = splat(w[2]), w2i = splat(sg * w[3]);
        const V w3r = splat(w[4]), w3i = splat(sg * w[5]);
        p[j] = Point{s02r + s13r, s02i + s13i};
        p[j + q] = Point{t1r * w2r - t1i * w2i, t1r * w2i + t1i * w2r};
        p[j + 2 * q] = Point{t2r * w1r - t2i * w1i, t2r * w1i + t2i * w1r};
        p[j + 3 * q] = Point{t3r * w3r - t3i * w3i, t3r * w3i + t3i * w3r};
      }
    }
  }

  // radix4_pass at q = 1: every twiddle is 1.
  template <bool kInverse>
  static void radix4_last(Point* x, int64_t m) {
    for (int64_t b = 0; b < m; b += 4) {
      Point* p = x + b;
      const Point a0 = p[0], a1 = p[1], a2 = p[2], a3 = p[3];
      const V s02r = a0.re + a2.re, s02i = a0.im + a2.im, d02r = a0.re - a2.re, d02i = a0.im - a2.im;
      const V s13r = a1.re + a3.re, s13i = a1.im + a3.im, d13r = a1.re - a3.re, d13i = a1.im - a3.im;
      const V mr = d02r + d13i, mi = d02i - d13r, pr = d02r - d13i, pi = d02i + d13r;
      p[0] = Point{s02r + s13r, s02i + s13i};
      p[1] = Point{s02r - s13r, s02i - s13i};
      p[2] = kInverse ? Point{pr, pi} : Point{mr, mi};
      p[3] = kInverse ? Point{mr, mi} : Point{pr, pi};
    }
  }

  // The DIF stage h = 1 (twiddle 1).
  static void radix2_last(Point* x, int64_t m) {
    for (int64_t b = 0; b < m; b += 2) {
      const Point a = x[b], c = x[b + 1];
      x[b] = Point{a.re + c.re, a.im + c.im};
      x[b + 1] = Point{a.re - c.re, a.im - c.im};
    }
  }
};
