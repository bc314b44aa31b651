// CPU twins of csrc/core/fft.cuh: the same in-place radix-2 DIF / DIT FFT and the same real-signal
// helpers, on std::complex<float|double>, header-only and torch-free.
//
// Stage h (h = n/2 .. 1) of the DIF (the last two fused into one radix-4 pass with trivial twiddles):  a = x[j], b = x[j+h]; x[j] = a + b; x[j+h] = (a-b) W_{2h}^(j mod h)
// (W_m = exp(-2*pi*i/m), conjugated for the inverse); the DIT runs the mirror stages h = 1 .. n/2.
// The inner loop of every stage runs over j with unit stride through the data and through a
// per-stage twiddle table (W_{2h}^j, j < h: one contiguous row per h), with the complex products
// written out on re/im so the compiler vectorises them (std::complex's operator* guards inf/nan
// through a library call and does not).
#pragma once
#include <cmath>
#include <complex>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace mmm::fft_cpu {

constexpr int kMaxLog2 = 30;

// W_{2h}^j = exp(-pi*i*j/h) for j < h, h = 2^log2h, built once per (T, h) in long double and
// rounded once (then every twiddle is correctly rounded to within an ulp).
template <class T>
const std::complex<T>* stage_twiddles(int log2h) {
  static std::once_flag once[kMaxLog2];
  static std::vector<std::complex<T>> table[kMaxLog2];
  std::call_once(once[log2h], [log2h] {
    const int64_t h = int64_t(1) << log2h;
    auto& t = table[log2h];
    t.resize(size_t(h));
    const long double pi = 3.141592653589793238462643383279502884L;
    for (int64_t j = 0; j < h; ++j) {
      const long double a = pi * static_cast<long double>(j) / static_cast<long double>(h);
      t[size_t(j)] = {static_cast<T>(std::cos(a)), static_cast<T>(-std::sin(a))};
    }
  });
  return table[log2h].data();
}

// The radix-4 DIF pass on blocks of m = 4q points (core/fft_cpu_lanes.h) multiplies its outputs
// 1, 2, 3 by W_m^j, W_m^2j, W_m^3j: six reals per j < q = 2^log2q, {re, im} of each in that order,
// built once per (T, q) in long double like stage_twiddles.
template <class T>
const T* radix4_twiddles(int log2q) {
  static std::once_flag once[kMaxLog2];
  static std::vector<T> table[kMaxLog2];
  std::call_once(once[log2q], [log2q] {
    const int64_t q = int64_t(1) << log2q;
    auto& t = table[log2q];
    t.resize(size_t(6 * q));
    const long double pi = 3.141592653589793238462643383279502884L;
    for (int64_t j = 0; j < q; ++j)
      for (int64_t e = 1; e <= 3; ++e) {
        const long double a = pi * static_cast<long double>(e * j) / static_cast<long double>(2 * q);
        t[size_t(6 * j + 2 * (e - 1))] = static_cast<T>(std::cos(a));
        t[size_t(6 * j + 2 * (e - 1) + 1)] = static_cast<T>(-std::sin(a));
      }
  });
  return table[log2q].data();
}

namespace detail {

template <class T>
inline void dif_stage(T* d, int64_t n, int log2h, bool inverse) {
  const int64_t h = int64_t(1) << log2h;
  const T* w = reinterpret_cast<const T*>(stage_twiddles<T>(log2h));
  const T sg = inverse ? T(-1) : T(1);
  for (int64_t i = 0; i < n; i += 2 * h) {
    T* a = d + 2 * i;
    T* b = d + 2 * (i + h);
    for (int64_t j = 0; j < h; ++j) {
      const T ar = a[2 * j], ai = a[2 * j + 1], br = b[2 * j], bi = b[2 * j + 1];
      const T dr = ar - br, di = ai - bi, wr = w[2 * j], wi = sg * w[2 * j + 1];
      a[2 * j] = ar + br;
      a[2 * j + 1] = ai + bi;
      b[2 * j] = dr * wr - di * wi;
      b[2 * j + 1] = dr * wi + di * wr;
    }
  }
}

template <class T>
inline void dit_stage(T* d, int64_t n, int log2h, bool inverse) {
  const int64_t h = int64_t(1) << log2h;
  const T* w = reinterpret_cast<const T*>(stage_twiddles<T>(log2h));
  const T sg = inverse ? T(-1) : T(1);
  for (int64_t i = 0; i < n; i += 2 * h) {
    T* a = d + 2 * i;
    T* b = d + 2 * (i + h);
    for (int64_t j = 0; j < h; ++j) {
      const T wr = w[2 * j], wi = sg * w[2 * j + 1], br0 = b[2 * j], bi0 = b[2 * j + 1];
      const T br = br0 * wr - bi0 * wi, bi = br0 * wi + bi0 * wr, ar = a[2 * j], ai = a[2 * j + 1];
      a[2 * j] = ar + br;
      a[2 * j + 1] = ai + bi;
      b[2 * j] = ar - br;
      b[2 * j + 1] = ai - bi;
    }
  }
}

}  // namespace detail

inline int64_t bit_reverse(int64_t i, int log2n) {
  int64_t r = 0;
  for (int b = 0; b < log2n; ++b) r |= ((i >> b) & 1) << (log2n - 1 - b);
  return r;
}

// bit_reverse(i, log2n) for i < 2^log2n, built once per log2n.
inline const uint32_t* bit_reverse_table(int log2n) {
  static std::once_flag once[kMaxLog2];
  static std::vector<uint32_t> table[kMaxLog2];
  std::call_once(once[log2n], [log2n] {
    const int64_t n = int64_t(1) << log2n;
    auto& t = table[log2n];
    t.resize(size_t(n));
    t[0] = 0;
    // rev(i) from rev(i >> 1): shift right by one and put i's low bit on top.
    for (int64_t i = 1; i < n; ++i) t[size_t(i)] = uint32_t((t[size_t(i >> 1)] >> 1) | ((i & 1) << (log2n - 1)));
  });
  return table[log2n].data();
}

// In-place bit-reversal permutation of n = 2^log2n points.
template <class T>
void bit_reverse_permute(std::complex<T>* data, int log2n) {
  const int64_t n = int64_t(1) << log2n;
  const uint32_t* rev = bit_reverse_table(log2n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rev[i];
    if (i < r) std::swap(data[i], data[r]);
  }
}

namespace detail {

// A 4-point DFT on each group of 4 complex points: the two smallest DIF stages (h = 2, 1) or,
// mirrored, the two first DIT stages (h = 1, 2). Their twiddles are 1 and W_4 = -i (+i inverse),
// so no table and no multiplications. Point x_k sits in slot In[k] of its group and X_k goes to
// slot Out[k]: DIF reads natural order and writes bit-reversed {0, 2, 1, 3}; DIT the reverse.
template <int I0, int I1, int I2, int I3, int O0, int O1, int O2, int O3, class T>
inline void dft4_groups(T* d, int64_t n, bool inverse) {
  for (int64_t i = 0; i < n; i += 4) {
    T* x = d + 2 * i;
    const T sr = x[2 * I0] + x[2 * I2], si = x[2 * I0 + 1] + x[2 * I2 + 1];  // x0 + x2
    const T dr = x[2 * I0] - x[2 * I2], di = x[2 * I0 + 1] - x[2 * I2 + 1];  // x0 - x2
    const T tr = x[2 * I1] + x[2 * I3], ti = x[2 * I1 + 1] + x[2 * I3 + 1];  // x1 + x3
    const T er = x[2 * I1] - x[2 * I3], ei = x[2 * I1 + 1] - x[2 * I3 + 1];
    const T ur = inverse ? -ei : ei, ui = inverse ? er : -er;                // (x1 - x3) * -+i
    x[2 * O0] = sr + tr;
    x[2 * O0 + 1] = si + ti;
    x[2 * O2] = sr - tr;
    x[2 * O2 + 1] = si - ti;
    x[2 * O1] = dr + ur;
    x[2 * O1 + 1] = di + ui;
    x[2 * O3] = dr - ur;
    x[2 * O3 + 1] = di - ui;
  }
}

template <class T>
inline void dif_last2(T* d, int64_t n, bool inverse) { dft4_groups<0, 1, 2, 3, 0, 2, 1, 3>(d, n, inverse); }
template <class T>
inline void dit_first2(T* d, int64_t n, bool inverse) { dft4_groups<0, 2, 1, 3, 0, 1, 2, 3>(d, n, inverse); }

}  // namespace detail

// Natural order in, bit-reversed order out (data[p] = X[bit_reverse(p)]), unnormalised.
template <class T>
void fft_dif(std::complex<T>* data, int log2n, bool inverse) {
  T* d = reinterpret_cast<T*>(data);
  const int64_t n = int64_t(1) << log2n;
  const int last = log2n >= 2 ? 2 : 0;
  for (int l = log2n - 1; l >= last; --l) detail::dif_stage(d, n, l, inverse);
  if (last) detail::dif_last2(d, n, inverse);
}

// Bit-reversed order in (data[p] = x[bit_reverse(p)]), natural order out, unnormalised.
template <class T>
void fft_dit(std::complex<T>* data, int log2n, bool inverse) {
  T* d = reinterpret_cast<T*>(data);
  const int64_t n = int64_t(1) << log2n;
  const int first = log2n >= 2 ? 2 : 0;
  if (first) detail::dit_first2(d, n, inverse);
  for (int l = first; l < log2n; ++l) detail::dit_stage(d, n, l, inverse);
}

// In-place complex FFT of n = 2^log2n points (0 <= log2n < 30), natural order in and out,
// unnormalised: X[k] = sum_j x[j] exp(-+2*pi*i*jk/n) (+ for inverse).
template <class T>
void fft_inplace(std::complex<T>* data, int log2n, bool inverse) {
  fft_dif(data, log2n, inverse);
  bit_reverse_permute(data, log2n);
}

// Real signals: x of length N = 2n packed as z[j] = x[2j] + i*x[2j+1], Z = FFT_n(z).
// rfft_post: data[0..n-1] = Z in, data[0..n] = X out (n + 1 slots), the unnormalised rfft
//   X[k] = sum_t x[t] exp(-2*pi*i*kt/N), via E = (Z[k] + conj Z[n-k])/2, O = (Z[k] - conj Z[n-k])/(2i),
//   X[k] = E + W_N^k O, X[n-k] = conj(E - W_N^k O). Same formulas as fft::cta_rfft_post.
template <class T>
void rfft_post(std::complex<T>* data, int log2n) {
  using C = std::complex<T>;
  const int64_t n = int64_t(1) << log2n;
  const C* wN = stage_twiddles<T>(log2n);  // W_{2n}^k = W_N^k, k < n
  const C z0 = data[0];
  data[0] = C(z0.real() + z0.imag(), 0);
  data[n] = C(z0.real() - z0.imag(), 0);
  for (int64_t k = 1; k <= n / 2; ++k) {
    const C zk = data[k], zn = std::conj(data[n - k]);
    const C e((zk.real() + zn.real()) / 2, (zk.imag() + zn.imag()) / 2);
    const T dr = zk.real() - zn.real(), di = zk.imag() - zn.imag();
    const C o(di / 2, -dr / 2);
    const C w = wN[k];
    const C wo(w.real() * o.real() - w.imag() * o.imag(), w.real() * o.imag() + w.imag() * o.real());
    data[k] = C(e.real() + wo.real(), e.imag() + wo.imag());
    data[n - k] = C(e.real() - wo.real(), -(e.imag() - wo.imag()));
  }
}

// irfft_pre: data[0..n] = X (bins 0..n; imaginary parts of X[0] and X[n] ignored) in,
// data[0..n-1] = Z' out with Z'[k] = (X[k] + conj X[n-k]) + i conj(W_N^k) (X[k] - conj X[n-k]):
// the unnormalised inverse FFT_n of Z' is u[2j] + i u[2j+1] with u = N * torch.fft.irfft(X, N)
// (the unnormalised inverse real DFT). Same formulas as fft::cta_irfft_pre.
template <class T>
void irfft_pre(std::complex<T>* data, int log2n) {
  using C = std::complex<T>;
  const int64_t n = int64_t(1) << log2n;
  const C* wN = stage_twiddles<T>(log2n);
  const T a = data[0].real(), c = data[n].real();
  data[0] = C(a + c, a - c);
  for (int64_t k = 1; k <= n / 2; ++k) {
    const C xk = data[k], xn = std::conj(data[n - k]);
    const C s(xk.real() + xn.real(), xk.imag() + xn.imag());
    const T er = xk.real() - xn.real(), ei = xk.imag() - xn.imag();
    const T wr = wN[k].real(), wi = -wN[k].imag();  // conj(W_N^k)
    const T dr = er * wr - ei * wi, di = er * wi + ei * wr;
    data[k] = C(s.real() - di, s.imag() + dr);
    data[n - k] = C(s.real() + di, -s.imag() + dr);
  }
}

}  // namespace mmm::fft_cpu
