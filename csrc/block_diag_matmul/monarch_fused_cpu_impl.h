// The fused Monarch forward's CPU twin, compiled once per instruction set by
// monarch_fused_cpu.cpp (inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// The same chunk loop and the same index map (monarch_fused.h) as the CUDA kernel, one task per
// plan.bt tokens: stage 1 writes a chunk's intermediate z permuted (MonarchIndex), rounded to
// x's dtype as the GPU stores it; stage 2 reads z as contiguous runs and writes y through
// monarch_y_col. Operands are converted to the accumulation type once, so the inner loops are
// unit-stride dot products.

namespace {

template <typename C, typename T>
inline C to_acc(T v) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<C>(v);
  else return static_cast<C>(to_float(v));
}

template <typename T, typename C>
inline T from_acc(C v) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<T>(v);
  else return from_float<T>(static_cast<float>(v));
}

// Dot product with 8 independent partial sums: vectorises without reassociation flags.
template <typename C>
inline C dot8(const C* a, const C* b, int64_t n) {
  C acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int v = 0; v < 8; ++v) acc[v] += a[i + v] * b[i + v];
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T, typename C>
void to_acc_array(std::vector<C>& out, const T* in, int64_t n) {
  out.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = to_acc<C>(in[i]);
}

template <typename T>
void run_monarch(const MonarchFused& f, const MonarchFusedPlan& plan, int64_t task_begin, int64_t task_end) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t k = f.k, q = f.q, p = f.p, l = f.l, s = f.s, r = f.r;
  const int64_t J = plan.chunk, bt = plan.bt, N = k * p;
  const MonarchIndex<int64_t> ix(k, q, l, r, J);
  const int64_t n1 = ix.n1(), units = ix.units();
  const T* X = static_cast<const T*>(f.x);
  T* Y = static_cast<T*>(f.y);
  std::vector<C> w1, w2, xt(size_t(bt * N)), z(size_t(bt * J * r));
  to_acc_array(w1, static_cast<const T*>(f.w1), k * q * p);  // once per call: a thread's tasks share it
  to_acc_array(w2, static_cast<const T*>(f.w2), l * s * r);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t t0 = task * bt, rows = std::min(bt, f.tokens - t0);
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t c = 0; c < N; ++c) xt[size_t(m * N + c)] = to_acc<C>(X[(t0 + m) * f.x_rs + c]);
    for (int64_t j0 = 0; j0 < l; j0 += J) {
      for (int64_t u = 0; u < units; ++u)  // stage 1, stored permuted
        for (int64_t e = 0; e < n1; ++e) {
          const int64_t b = ix.block(j0, u);
          const C* wrow = w1.data() + (b * q + ix.w1_row(j0, e)) * p;
          const int64_t zc = ix.z_col(u, e);
          for (int64_t m = 0; m < rows; ++m)
            z[size_t(m * J * r + zc)] = to_acc<C>(from_acc<T>(dot8(xt.data() + m * N + b * p, wrow, p)));
        }
      for (int64_t jj = 0; jj < J; ++jj)  // stage 2 from contiguous runs of z
        for (int64_t t2 = 0; t2 < s; ++t2) {
          const C* wrow = w2.data() + ((j0 + jj) * s + t2) * r;
          const int64_t yc = monarch_y_col(t2, jj, j0, l);
          for (int64_t m = 0; m < rows; ++m)
            Y[(t0 + m) * f.y_rs + yc] = from_acc<T>(dot8(z.data() + m * J * r + jj * r, wrow, r));
        }
    }
  }
}

}  // namespace

void monarch_fused_tasks(const MonarchFused& f, const MonarchFusedPlan& plan, int64_t task_begin, int64_t task_end) {
  switch (f.dtype) {
    case DType::kFloat32: run_monarch<float>(f, plan, task_begin, task_end); break;
    case DType::kFloat64: run_monarch<double>(f, plan, task_begin, task_end); break;
    case DType::kFloat16: run_monarch<Half>(f, plan, task_begin, task_end); break;
    case DType::kBFloat16: run_monarch<BFloat16>(f, plan, task_begin, task_end); break;
    default: break;  // the glue admits no other dtype
  }
}
