// Shared by every torch-free layer (CPU twins, CUDA kernels, launchers, C++ benchmarks).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MMM_HD __host__ __device__ __forceinline__
#else
#define MMM_HD inline
#endif

namespace mmm {

// The element types the kernels see. The torch glue maps torch dtypes onto these. Complex types
// are interleaved (re, im) pairs of float32 / float64, the layout torch and cuFFT use.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kComplex64 = 4, kComplex128 = 5 };

MMM_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mmm
