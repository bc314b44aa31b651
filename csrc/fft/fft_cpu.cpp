// FFT on the CPU: per row, a contiguous std::complex buffer of n (+1) points and the radix-2 DIF
// of core/fft_cpu.h (the CUDA kernels' algorithm), bit-reversed and scaled on the way out. The
// caller parallelises over rows; the stages' inner loops vectorise.
#include <complex>
#include <vector>

#include "core/fft_cpu.h"
#include "fft/params.h"

namespace mmm {
namespace {

template <typename T>
void run(const FftParams& p, int64_t r0, int64_t r1) {
  using C = std::complex<T>;
  const int L = p.log2n;
  const int64_t n = int64_t(1) << L;
  const T scale = static_cast<T>(p.scale);
  std::vector<C> buf(size_t(n) + 1);
  const uint32_t* rev = fft_cpu::bit_reverse_table(L);
  for (int64_t r = r0; r < r1; ++r) {
    switch (p.kind) {
      case FftKind::kC2C: {
        const C* x = static_cast<const C*>(p.x) + r * p.x_row_stride;
        for (int64_t j = 0; j < n; ++j) buf[j] = x[j];
        fft_cpu::fft_dif(buf.data(), L, p.inverse);  // the bit reversal folds into the store
        C* y = static_cast<C*>(p.y) + r * p.y_row_stride;
        for (int64_t k = 0; k < n; ++k) y[k] = buf[rev[k]] * scale;
        break;
      }
      case FftKind::kR2C: {
        const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
        for (int64_t j = 0; j < n; ++j) buf[j] = C(x[2 * j], x[2 * j + 1]);
        fft_cpu::fft_inplace(buf.data(), L, false);
        fft_cpu::rfft_post(buf.data(), L);
        C* y = static_cast<C*>(p.y) + r * p.y_row_stride;
        for (int64_t k = 0; k <= n; ++k) y[k] = buf[k] * scale;
        break;
      }
      case FftKind::kC2R: {
        const C* x = static_cast<const C*>(p.x) + r * p.x_row_stride;
        for (int64_t k = 0; k <= n; ++k) buf[k] = x[k];
        fft_cpu::irfft_pre(buf.data(), L);
        fft_cpu::fft_dif(buf.data(), L, true);
        T* y = static_cast<T*>(p.y) + r * p.y_row_stride;
        for (int64_t j = 0; j < n; ++j) {
          y[2 * j] = buf[rev[j]].real() * scale;
          y[2 * j + 1] = buf[rev[j]].imag() * scale;
        }
        break;
      }
    }
  }
}

}  // namespace

void fft_rows_cpu(const FftParams& p, int64_t row_begin, int64_t row_end) {
  if (p.fp64) run<double>(p, row_begin, row_end);
  else run<float>(p, row_begin, row_end);
}

}  // namespace mmm
