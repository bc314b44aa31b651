// hadamard_transform's CPU algorithm, compiled once per instruction set by hadamard_cpu.cpp
// (inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// Per row, an fp32 (fp64) buffer of the padded length m, zeros past n. The strides below a
// vector's width are done inside each vector (a lane permutation and one multiply-add by +-1);
// the others in radix-4 sweeps, two strides per pass over the buffer, of vertical vector
// arithmetic. Every output is the same additions and subtractions, on the same values, as the
// textbook loop (strides 1, 2, 4, ...), so the result is bitwise the same in every copy.

#include "core/cpu_rows.h"

namespace {

template <typename C>
struct HadamardRow {
  static constexpr int kW = MMM_CPU_VECTOR_BYTES / int(sizeof(C));
  typedef C V __attribute__((vector_size(MMM_CPU_VECTOR_BYTES)));
  using I = std::conditional_t<sizeof(C) == 8, int64_t, int32_t>;
  typedef I VI __attribute__((vector_size(MMM_CPU_VECTOR_BYTES)));

  static V ld(const C* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
  static void st(C* p, V v) { std::memcpy(p, &v, sizeof v); }

  // Stride h < kW inside one vector: lane i pairs with lane i ^ h; the lower lane of a pair gets
  // a + b, the upper a - b (as t + s * v with s = -1: exact, so the same bits as a - b).
  template <int h>
  static V within(V v) {
    VI partner;
    V sign;
    for (int i = 0; i < kW; ++i) {
      partner[i] = I(i ^ h);
      sign[i] = (i & h) ? C(-1) : C(1);
    }
    return __builtin_shuffle(v, partner) + sign * v;
  }

  template <int h>
  static void within_all(C* buf, int64_t m) {
    if constexpr (h < kW) {
      for (int64_t j = 0; j < m; j += kW) st(buf + j, within<h>(ld(buf + j)));
      within_all<2 * h>(buf, m);
    }
  }

  static void transform(C* buf, int64_t m) {
    if (m < kW) {  // too short for a vector: the textbook loop
      for (int64_t h = 1; h < m; h *= 2)
        for (int64_t i = 0; i < m; i += 2 * h)
          for (int64_t j = i; j < i + h; ++j) {
            const C a = buf[j], b = buf[j + h];
            buf[j] = a + b;
            buf[j + h] = a - b;
          }
      return;
    }
    within_all<1>(buf, m);
    int64_t h = kW;
    for (; 4 * h <= m; h *= 4)  // strides h and 2h in one pass
      for (int64_t i = 0; i < m; i += 4 * h)
        for (int64_t j = i; j < i + h; j += kW) {
          const V a = ld(buf + j), b = ld(buf + j + h), c = ld(buf + j + 2 * h), d = ld(buf + j + 3 * h);
          const V ab = a + b, a_b = a - b, cd = c + d, c_d = c - d;
          st(buf + j, ab + cd);
          st(buf + j + h, a_b + c_d);
          st(buf + j + 2 * h, ab - cd);
          st(buf + j + 3 * h, a_b - c_d);
        }
    if (2 * h <= m)  // one stride left
      for (int64_t j = 0; j < h; j += kW) {
        const V a = ld(buf + j), b = ld(buf + j + h);
        st(buf + j, a + b);
        st(buf + j + h, a - b);
      }
  }
};

template <typename T>
void run(const HadamardParams& p, int64_t r0, int64_t r1) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t n = p.n, m = p.n_pow2;
  std::vector<C> buf(static_cast<size_t>(m));
  const C scale = static_cast<C>(p.scale);
  for (int64_t r = r0; r < r1; ++r) {
    load_row(static_cast<const T*>(p.x) + r * p.x_row_stride, buf.data(), n);
    std::fill(buf.begin() + n, buf.end(), C(0));
    HadamardRow<C>::transform(buf.data(), m);
    for (int64_t j = 0; j < n; ++j) buf[size_t(j)] *= scale;
    store_row(buf.data(), static_cast<T*>(p.y) + r * p.y_row_stride, n);
  }
}

}  // namespace

void hadamard_rows(const HadamardParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.dtype) {
    case DType::kFloat32: run<float>(p, row_begin, row_end); break;
    case DType::kFloat64: run<double>(p, row_begin, row_end); break;
    case DType::kFloat16: run<Half>(p, row_begin, row_end); break;
    case DType::kBFloat16: run<BFloat16>(p, row_begin, row_end); break;
    default: break;  // the glue admits no other dtype
  }
}
