// Fast Walsh-Hadamard transform on the CPU: per row, an fp32 (fp64) buffer of the padded length,
// log2(m) in-place butterfly sweeps whose inner loops (stride >= 8) vectorise.
#include <type_traits>
#include <vector>

#include "core/numeric.h"
#include "hadamard/params.h"

namespace mmm {
namespace {

template <typename T>
void run(const HadamardParams& p, int64_t r0, int64_t r1) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t n = p.n, m = p.n_pow2;
  std::vector<C> buf(m);
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (std::is_arithmetic_v<T>) buf[j] = static_cast<C>(x[j]);
      else buf[j] = to_float(x[j]);
    }
    for (int64_t j = n; j < m; ++j) buf[j] = 0;
    for (int64_t h = 1; h < m; h *= 2)
      for (int64_t i = 0; i < m; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const C a = buf[j], b = buf[j + h];
          buf[j] = a + b;
          buf[j + h] = a - b;
        }
    T* y = static_cast<T*>(p.y) + r * p.y_row_stride;
    const C scale = static_cast<C>(p.scale);
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (std::is_arithmetic_v<T>) y[j] = static_cast<T>(buf[j] * scale);
      else y[j] = from_float<T>(buf[j] * scale);
    }
  }
}

}  // namespace

void hadamard_cpu(const HadamardParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p, row_begin, row_end); break;
    case DType::kFloat64: run<double>(p, row_begin, row_end); break;
    case DType::kFloat16: run<Half>(p, row_begin, row_end); break;
    case DType::kBFloat16: run<BFloat16>(p, row_begin, row_end); break;
  }
}

}  // namespace mmm
