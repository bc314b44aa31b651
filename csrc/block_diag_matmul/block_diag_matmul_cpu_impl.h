// The block GEMM's CPU algorithm, compiled once per instruction set by block_diag_matmul_cpu.cpp
// (inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// A task is (block, 32 rows of C). Operands are packed into contiguous panels (A row-wise, B
// column-wise, kPanel reduction elements at a time), so the inner loop is a unit-stride dot
// product that vectorises whatever the strides of the permuted views.

namespace {

constexpr int64_t kPanel = 2048;  // reduction elements packed at a time: bounds scratch memory

template <typename C, typename T>
inline C load(const T* p) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<C>(*p);
  else return static_cast<C>(to_float(*p));
}

template <typename T, typename C>
inline void store(T* p, C v) {
  if constexpr (std::is_arithmetic_v<T>) *p = static_cast<T>(v);
  else *p = from_float<T>(static_cast<float>(v));
}

// Dot product with 8 independent partial sums: vectorises without reassociation flags.
template <typename C>
inline C dot(const C* a, const C* b, int64_t n) {
  C acc[8] = {};
  int64_t p = 0;
  for (; p + 8 <= n; p += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[p + l] * b[p + l];
  for (; p < n; ++p) acc[0] += a[p] * b[p];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
void run(const BlockGemm& g, int64_t task_begin, int64_t task_end) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t row_chunks = ceil_div(g.m, kBlockGemmCpuRows);
  const T* A = static_cast<const T*>(g.a);
  const T* B = static_cast<const T*>(g.b);
  T* Cm = static_cast<T*>(g.c);
  std::vector<C> bt, arow, acc;
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t blk = task / row_chunks;
    const int64_t i0 = (task % row_chunks) * kBlockGemmCpuRows, i1 = std::min(g.m, i0 + kBlockGemmCpuRows);
    acc.assign(size_t((i1 - i0) * g.n), C(0));
    for (int64_t p0 = 0; p0 < g.k; p0 += kPanel) {
      const int64_t kp = std::min(kPanel, g.k - p0);
      bt.resize(size_t(g.n * kp));
      for (int64_t j = 0; j < g.n; ++j)  // B panel, column j contiguous
        for (int64_t p = 0; p < kp; ++p)
          bt[j * kp + p] = load<C>(B + blk * g.b_bs + (p0 + p) * g.b_ks + j * g.b_ns);
      arow.resize(size_t(kp));
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t p = 0; p < kp; ++p) arow[p] = load<C>(A + blk * g.a_bs + i * g.a_ms + (p0 + p) * g.a_ks);
        C* out = acc.data() + (i - i0) * g.n;
        for (int64_t j = 0; j < g.n; ++j) out[j] += dot(arow.data(), bt.data() + j * kp, kp);
      }
    }
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < g.n; ++j)
        store(Cm + blk * g.c_bs + i * g.c_ms + j * g.c_ns, acc[(i - i0) * g.n + j]);
  }
}

}  // namespace

void run_tasks(const BlockGemm& g, int64_t task_begin, int64_t task_end) {
  switch (g.dtype) {
    case DType::kFloat32: run<float>(g, task_begin, task_end); break;
    case DType::kFloat64: run<double>(g, task_begin, task_end); break;
    case DType::kFloat16: run<Half>(g, task_begin, task_end); break;
    case DType::kBFloat16: run<BFloat16>(g, task_begin, task_end); break;
  }
}
