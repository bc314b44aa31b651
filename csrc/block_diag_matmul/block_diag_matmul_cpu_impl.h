// The block GEMM's CPU algorithm, compiled once per instruction set by block_diag_matmul_cpu.cpp
// (inside namespace mmm::<isa>; no include guard, no includes on purpose).
//
// A task is (block, 64 rows of C): a weight gradient's whole block up to 64 wide, so the packing
// reads each token's run of dy whole (rows 16 KB apart defeat the prefetchers). Where blocks are
// interleaved element by element (Monarch's second stage), a task takes a group of 16 blocks and
// moves their operands together, a run of 16 elements at a time. Operands are
// packed kPanel reduction elements at a time into contiguous buffers (A in its own orientation
// unless it can be read in place, B k-major for core/cpu_gemm.h's micro-kernels), so every loop
// is unit-stride whatever the strides of the permuted views.

#include "core/cpu_gemm.h"

namespace {

constexpr int64_t kPanel = 2048;  // reduction elements packed at a time: bounds scratch memory
constexpr int64_t kGroupPanel = 256;  // the same for a group of blocks (block_gemm_cpu_group)

template <typename C, typename T>
inline C load(const T* p) {
  if constexpr (std::is_arithmetic_v<T>) return static_cast<C>(*p);
  else return static_cast<C>(widen(*p));
}

template <typename T, typename C>
inline void store(T* p, C v) {
  if constexpr (std::is_arithmetic_v<T>) *p = static_cast<T>(v);
  else *p = narrow<T>(static_cast<float>(v));
}

// kPairs: bf16 on a CPU with AVX512_BF16, whose micro-kernel (CpuGemmBf16) takes the operands as
// bf16 bits, a pair of reduction elements per step; the packed layouts below are the same with
// the reduction in steps of kStep elements (a pair, or one).
template <typename T, bool kPairs = false>
void run(const BlockGemm& g, int64_t task_begin, int64_t task_end) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  using Gemm = std::conditional_t<kPairs, CpuGemmBf16, CpuGemm<C>>;
  using E = std::conditional_t<kPairs, uint16_t, C>;  // the micro-kernel's operand type
  constexpr int64_t kStep = kPairs ? 2 : 1;
  auto operand = [](const T* v) -> E {
    if constexpr (kPairs) return v->bits;
    else return load<C>(v);
  };
  const int64_t row_chunks = ceil_div(g.m, kBlockGemmCpuRows), group = block_gemm_cpu_group(g);
  const int64_t panel = group > 1 ? kGroupPanel : kPanel;
  const T* A = static_cast<const T*>(g.a);
  const T* B = static_cast<const T*>(g.b);
  T* Cm = static_cast<T*>(g.c);
  std::vector<E> bp, ap;
  std::vector<C> acc;
  int64_t packed_b0 = -1, packed_p0 = -1;  // the B panels in bp: a thread's next task often reuses them
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b0 = task / row_chunks * group, nb = std::min(group, g.batch - b0);
    const int64_t i0 = (task % row_chunks) * kBlockGemmCpuRows, i1 = std::min(g.m, i0 + kBlockGemmCpuRows);
    const int64_t rows = i1 - i0;
    acc.resize(size_t(nb * rows * g.n));
    for (int64_t p0 = 0; p0 < g.k; p0 += panel) {  // panels are even: no pair straddles two
      const int64_t kp = std::min(panel, g.k - p0), kp_padded = (kp + kStep - 1) / kStep * kStep;
      const int64_t pkb = Gemm::packed_size(kp, g.n);
      if (b0 != packed_b0 || p0 != packed_p0) {
        bp.resize(size_t(nb * pkb));
        const T* Bb = B + b0 * g.b_bs + p0 * g.b_ks;
        if (nb > 1) {  // the group's blocks innermost, where they are adjacent
          std::fill(bp.begin(), bp.end(), E(0));
          for (int64_t p = 0; p < kp; ++p)
            for (int64_t j = 0; j < g.n; ++j) {
              const T* src = Bb + p * g.b_ks + j * g.b_ns;
              E* dst = bp.data() + Gemm::packed_index(kp, p, j);
              for (int64_t b = 0; b < nb; ++b) dst[b * pkb] = operand(src + b * g.b_bs);
            }
        } else if (g.b_ns == 1) {  // contiguous columns: row copies, or a loop that vectorises
          if constexpr (std::is_same_v<T, E>)
            Gemm::pack_b_rows(bp.data(), kp, g.n, Bb, g.b_ks);
          else
            Gemm::pack_b(bp.data(), kp, g.n, [&](int64_t p, int64_t j) { return operand(Bb + p * g.b_ks + j); });
        } else {
          Gemm::pack_b(bp.data(), kp, g.n, [&](int64_t p, int64_t j) { return operand(Bb + p * g.b_ks + j * g.b_ns); });
        }
        packed_b0 = b0, packed_p0 = p0;
      }
      // A is read in place where it is the micro-kernel's type already with a unit-stride
      // reduction of whole steps; else packed in its own orientation (contiguous copies; the
      // micro-kernel reads it by broadcasts, any strides): rows of p (a group's blocks
      // innermost when read), or, where rows are contiguous (the weight gradient's dy),
      // step-major runs of rows. An odd panel's last pair ends in a zero.
      const bool in_place = (kPairs || std::is_same_v<T, C>) && g.a_ks == 1 && kp == kp_padded;
      if (!in_place && nb > 1) {
        ap.resize(size_t(nb * rows * kp_padded));
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t p = 0; p < kp; ++p) {
            const T* src = A + b0 * g.a_bs + (i0 + i) * g.a_ms + (p0 + p) * g.a_ks;
            E* dst = ap.data() + i * kp_padded + p;
            for (int64_t b = 0; b < nb; ++b) dst[b * rows * kp_padded] = operand(src + b * g.a_bs);
          }
          for (int64_t b = 0; kp < kp_padded && b < nb; ++b) ap[size_t((b * rows + i) * kp_padded + kp)] = E(0);
        }
      }
      for (int64_t b = 0; b < nb; ++b) {
        const T* Ab = A + (b0 + b) * g.a_bs + i0 * g.a_ms + p0 * g.a_ks;
        const E* a;
        int64_t a_rs, a_ps = kStep;
        if (in_place) {
          a = reinterpret_cast<const E*>(Ab), a_rs = g.a_ms;
        } else if (nb > 1) {
          a = ap.data() + b * rows * kp_padded, a_rs = kp_padded;
        } else if (g.a_ms == 1 && g.a_ks != 1) {
          const int64_t pitch = (rows + 15) / 16 * 16;
          a_rs = kStep, a_ps = kStep * pitch;
          ap.resize(size_t(kp_padded * pitch));
          for (int64_t p = 0; p < kp_padded; ++p) {
            E* dst = ap.data() + p / kStep * a_ps + p % kStep;
            if (p < kp)
              for (int64_t i = 0; i < rows; ++i) dst[i * kStep] = operand(Ab + p * g.a_ks + i);
            else
              for (int64_t i = 0; i < rows; ++i) dst[i * kStep] = E(0);
          }
          a = ap.data();
        } else {
          a_rs = kp_padded;
          ap.resize(size_t(rows * kp_padded));
          for (int64_t i = 0; i < rows; ++i) {
            for (int64_t p = 0; p < kp; ++p) ap[size_t(i * kp_padded + p)] = operand(Ab + i * g.a_ms + p * g.a_ks);
            if (kp < kp_padded) ap[size_t(i * kp_padded + kp)] = E(0);
          }
          a = ap.data();
        }
        Gemm::run(a, a_rs, a_ps, rows, kp, bp.data() + b * pkb, g.n, acc.data() + b * rows * g.n, g.n,
                  /*accumulate=*/p0 > 0);
      }
    }
    T* Cb = Cm + b0 * g.c_bs + i0 * g.c_ms;
    if (nb == 1)  // (rows of unit stride: the copy vectorises)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < g.n; ++j) store(Cb + i * g.c_ms + j * g.c_ns, acc[size_t(i * g.n + j)]);
    else
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < g.n; ++j) {
          T* dst = Cb + i * g.c_ms + j * g.c_ns;
          for (int64_t b = 0; b < nb; ++b) store(dst + b * g.c_bs, acc[size_t((b * rows + i) * g.n + j)]);
        }
  }
}

}  // namespace

void run_tasks(const BlockGemm& g, int64_t task_begin, int64_t task_end) {
  switch (g.dtype) {
    case DType::kFloat32: run<float>(g, task_begin, task_end); break;
    case DType::kFloat64: run<double>(g, task_begin, task_end); break;
    case DType::kFloat16: run<Half>(g, task_begin, task_end); break;
    case DType::kBFloat16:
#if defined(MMM_CPU_AVX512)
      if (cpu_has_avx512_bf16()) {
        run<BFloat16, true>(g, task_begin, task_end);
        break;
      }
#endif
      run<BFloat16>(g, task_begin, task_end);
      break;
    default: break;  // the glue admits no other dtype
  }
}
