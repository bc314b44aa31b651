// The fused Monarch forward's CPU twin, compiled once per instruction set by
// monarch_fused_cpu.cpp (inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// The same chunk loop and the same index map (monarch_fused.h) as the CUDA kernel, one task per
// plan.bt tokens: stage 1 writes a chunk's intermediate z permuted (MonarchIndex), rounded to
// x's dtype as the GPU stores it; stage 2 reads z as contiguous runs and writes y through
// monarch_y_col. Operands are converted to the accumulation type once, and the small GEMMs run
// on core/cpu_gemm.h's micro-kernel; bf16 on a CPU with AVX512_BF16 keeps them bf16 and runs
// them on its bf16-pair micro-kernel (kPairs: needs even p and r, so no pair straddles blocks).

#include "core/cpu_gemm.h"

namespace {

template <typename C, typename T>
inline C to_acc(T v) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<C>(v);
  else return static_cast<C>(widen(v));
}

template <typename T, typename C>
inline T from_acc(C v) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<T>(v);
  else return narrow<T>(static_cast<float>(v));
}

template <typename T, bool kPairs = false>
void run_monarch(const MonarchFused& f, const MonarchFusedPlan& plan, int64_t task_begin, int64_t task_end) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  // The micro-kernel and its operand type: C, or bf16 bits taken a pair (a_step) at a time.
  using Gemm = std::conditional_t<kPairs, CpuGemmBf16, CpuGemm<C>>;
  using E = std::conditional_t<kPairs, uint16_t, C>;
  constexpr int64_t a_step = kPairs ? 2 : 1;
  auto operand = [](T v) -> E {
    if constexpr (kPairs) return v.bits;
    else return to_acc<C>(v);
  };
  auto rounded = [](C v) -> E {  // z as the GPU stores it, rounded to T
    if constexpr (kPairs) return from_acc<T>(v).bits;
    else return to_acc<C>(from_acc<T>(v));
  };
  const int64_t k = f.k, q = f.q, p = f.p, l = f.l, s = f.s, r = f.r;
  const int64_t J = plan.chunk, bt = plan.bt, N = k * p;
  const MonarchIndex<int64_t> ix(k, q, l, r, J);
  const int64_t n1 = ix.n1(), units = ix.units();
  const T* X = static_cast<const T*>(f.x);
  const T* W1 = static_cast<const T*>(f.w1);
  const T* W2 = static_cast<const T*>(f.w2);
  T* Y = static_cast<T*>(f.y);
  // The weights packed once per call (a thread's tasks share them) as the micro-kernel's B: per
  // (chunk, unit) the unit's n1 w1 rows, per stage-2 block its s w2 rows, k-major.
  const int64_t pk1 = Gemm::packed_size(p, n1), pk2 = Gemm::packed_size(r, s);
  std::vector<E> w1p(size_t(l / J * units * pk1)), w2p(size_t(l * pk2));
  for (int64_t j0 = 0; j0 < l; j0 += J)
    for (int64_t u = 0; u < units; ++u) {
      const T* wb = W1 + ix.block(j0, u) * q * p;
      Gemm::pack_b(w1p.data() + (j0 / J * units + u) * pk1, p, n1,
                   [&](int64_t c, int64_t e) { return operand(wb[ix.w1_row(j0, e) * p + c]); });
    }
  for (int64_t j = 0; j < l; ++j)
    Gemm::pack_b(w2p.data() + j * pk2, r, s, [&](int64_t i, int64_t t2) { return operand(W2[(j * s + t2) * r + i]); });
  std::vector<E> xt(size_t(bt * N)), z(size_t(bt * J * r));
  // Stage 2's J outputs one after another, each bt x s at a pitch off 4 KB multiples: y is
  // written reading across them, and reads 4 KB apart would all fall into one L1 set.
  const int64_t pitch2 = bt * s + 16;
  std::vector<C> out(size_t(bt * n1)), out2(size_t(J * pitch2));
  std::vector<int64_t> zcol(static_cast<size_t>(n1));
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t t0 = task * bt, rows = std::min(bt, f.tokens - t0);
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t c = 0; c < N; ++c) xt[size_t(m * N + c)] = operand(X[(t0 + m) * f.x_rs + c]);
    for (int64_t j0 = 0; j0 < l; j0 += J) {
      for (int64_t u = 0; u < units; ++u) {  // stage 1, stored permuted and rounded to T
        Gemm::run(xt.data() + ix.block(j0, u) * p, N, a_step, rows, p, w1p.data() + (j0 / J * units + u) * pk1, n1,
                  out.data(), n1, false);
        for (int64_t e = 0; e < n1; ++e) zcol[size_t(e)] = ix.z_col(u, e);  // (divisions once per column)
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t e = 0; e < n1; ++e) z[size_t(m * J * r + zcol[size_t(e)])] = rounded(out[size_t(m * n1 + e)]);
      }
      for (int64_t jj = 0; jj < J; ++jj)  // stage 2 from contiguous runs of z
        Gemm::run(z.data() + jj * r, J * r, a_step, rows, r, w2p.data() + (j0 + jj) * pk2, s,
                  out2.data() + jj * pitch2, s, false);
      // The chunk's J blocks own adjacent columns of y (monarch_y_col): stored as runs of J.
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t t2 = 0; t2 < s; ++t2) {
          T* y = Y + (t0 + m) * f.y_rs + monarch_y_col<int64_t>(t2, 0, j0, l);
          for (int64_t jj = 0; jj < J; ++jj) y[jj] = from_acc<T>(out2[size_t(jj * pitch2 + m * s + t2)]);
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
    case DType::kBFloat16:
#if defined(MMM_CPU_AVX512)
      if (cpu_has_avx512_bf16() && f.p % 2 == 0 && f.r % 2 == 0) {
        run_monarch<BFloat16, true>(f, plan, task_begin, task_end);
        break;
      }
#endif
      run_monarch<BFloat16>(f, plan, task_begin, task_end);
      break;
    default: break;  // the glue admits no other dtype
  }
}
