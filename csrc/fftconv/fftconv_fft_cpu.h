// The FFT pieces the fftconv CPU twin uses, for a real signal of length L = 2^log2L packed as
// n = L/2 complex numbers z[j] = x[2j] + i x[2j+1]:
//   fft(plan, z, inverse)    in place, natural order, unnormalised, exp(-2 pi i jk / n) forward
//   rfft_post(plan, z, X)    X[0..n] = rfft(x, L) from z = fft(packed x)
//   irfft_pre(plan, X, z)    z such that fft(z, inverse) / n = packed irfft(X, L)
// One Plan per call and thread: the twiddles exp(-2 pi i j / L), j in [0, n], computed in
// double, and the bit-reversal permutation.
#pragma once
#include <cmath>
#include <complex>
#include <cstdint>
#include <utility>
#include <vector>

namespace mmm::fftcpu {

template <typename C> struct Plan {
  int log2n;
  int64_t n;
  std::vector<std::complex<C>> w;  // (n + 1,) exp(-2 pi i j / (2n))
  std::vector<int32_t> rev;        // (n,)
  explicit Plan(int log2L) : log2n(log2L - 1), n(int64_t(1) << (log2L - 1)), w(n + 1), rev(n) {
    const double step = -M_PI / double(n);
    for (int64_t j = 0; j <= n; ++j) w[j] = std::complex<C>(C(std::cos(step * double(j))), C(std::sin(step * double(j))));
    for (int64_t i = 0; i < n; ++i) {
      int32_t r = 0;
      for (int b = 0; b < log2n; ++b) r |= int32_t((i >> b) & 1) << (log2n - 1 - b);
      rev[i] = r;
    }
  }
};

// Iterative radix-2 decimation in time. Twiddle of a butterfly at offset j in a block of
// 2*half: exp(-2 pi i j / (2 half)) = w[j * n / half].
template <typename C> void fft(const Plan<C>& plan, std::complex<C>* z, bool inverse) {
  const int64_t n = plan.n;
  for (int64_t i = 0; i < n; ++i)
    if (i < plan.rev[i]) std::swap(z[i], z[plan.rev[i]]);
  C* a = reinterpret_cast<C*>(z);  // interleaved (re, im): plain loops that vectorise
  const C sign = inverse ? C(-1) : C(1);
  for (int64_t half = 1; half < n; half *= 2) {
    const int64_t tstep = n / half;
    for (int64_t i = 0; i < n; i += 2 * half)
      for (int64_t j = 0; j < half; ++j) {
        const C wr = plan.w[j * tstep].real(), wi = sign * plan.w[j * tstep].imag();
        C* p = a + 2 * (i + j);
        C* q = a + 2 * (i + j + half);
        const C tr = q[0] * wr - q[1] * wi, ti = q[0] * wi + q[1] * wr;
        q[0] = p[0] - tr;
        q[1] = p[1] - ti;
        p[0] += tr;
        p[1] += ti;
      }
  }
}

// E[k] = fft(x_even)[k] = (Z[k] + conj Z[n-k]) / 2, O[k] = fft(x_odd)[k] = (Z[k] - conj Z[n-k]) / 2i,
// X[k] = E[k] + w^k O[k] for k in [0, n] (Z indices mod n).
template <typename C> void rfft_post(const Plan<C>& plan, const std::complex<C>* z, std::complex<C>* X) {
  const int64_t n = plan.n;
  for (int64_t k = 0; k <= n; ++k) {
    const std::complex<C> a = z[k & (n - 1)], b = std::conj(z[(n - k) & (n - 1)]);
    const C er = (a.real() + b.real()) / 2, ei = (a.imag() + b.imag()) / 2;
    const C orr = (a.imag() - b.imag()) / 2, oi = -(a.real() - b.real()) / 2;  // (a - b) / 2i
    const C wr = plan.w[k].real(), wi = plan.w[k].imag();
    X[k] = std::complex<C>(er + wr * orr - wi * oi, ei + wr * oi + wi * orr);
  }
}

// The inverse of rfft_post: X[k + n] = conj X[n - k] (x real), so E[k] = (X[k] + conj X[n-k]) / 2,
// O[k] = (X[k] - conj X[n-k]) conj(w^k) / 2, and Z[k] = E[k] + i O[k].
template <typename C> void irfft_pre(const Plan<C>& plan, const std::complex<C>* X, std::complex<C>* z) {
  const int64_t n = plan.n;
  for (int64_t k = 0; k < n; ++k) {
    const std::complex<C> a = X[k], b = std::conj(X[n - k]);
    const C er = (a.real() + b.real()) / 2, ei = (a.imag() + b.imag()) / 2;
    const C dr = (a.real() - b.real()) / 2, di = (a.imag() - b.imag()) / 2;
    const C wr = plan.w[k].real(), wi = -plan.w[k].imag();
    const C orr = dr * wr - di * wi, oi = dr * wi + di * wr;
    z[k] = std::complex<C>(er - oi, ei + orr);
  }
}

}  // namespace mmm::fftcpu
