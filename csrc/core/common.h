// Shared by every torch-free layer (CPU twins, CUDA kernels, launchers, C++ benchmarks).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MMM_HD __host__ __device__ __forceinline__
#else
#define MMM_HD inline
#endif

namespace mmm {

// The element types the kernels see. The torch glue maps torch dtypes onto these.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

MMM_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mmm
