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
  using Point = typename L::Point;
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
        L::load_complex(buf, static_cast<const T*>(p.x) + r0 * xs, xs, n, used);
        L::dif(buf, log2n, p.inverse);
        L::store_complex(static_cast<T*>(p.y) + r0 * ys, ys, buf, rev, n, used, scale);
        break;
      }
      case FftKind::kR2C: {  // x, real, is read as n complex numbers a row
        L::load_complex(buf, static_cast<const T*>(p.x) + r0 * p.x_row_stride, p.x_row_stride, n, used);
        L::dif(buf, log2n, false);
        L::rfft_post(buf, log2n, out);
        L::store_complex(static_cast<T*>(p.y) + r0 * ys, ys, out, nullptr, n + 1, used, scale);
        break;
      }
      case FftKind::kC2R: {  // y, real, is written as n complex numbers a row
        L::load_complex(buf, static_cast<const T*>(p.x) + r0 * xs, xs, n + 1, used);
        L::irfft_pre(buf, log2n, buf);
        L::dif(buf, log2n, true);
        L::store_complex(static_cast<T*>(p.y) + r0 * p.y_row_stride, p.y_row_stride, buf, rev, n, used, scale);
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
