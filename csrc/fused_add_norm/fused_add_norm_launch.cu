// Entry points of the fused_add_norm CUDA kernels: runtime dtypes -> the instantiation.
#include <cuda_runtime.h>

#include "fused_add_norm/fused_add_norm_launch_template.cuh"

namespace mmm {

#define MMM_DECLARE(T, TH, TW)                                                                 \
  extern template const char* launch_fwd_t<T, TH, TW>(const FusedAddNormFwdParams&, cudaStream_t, \
                                                      int);                                   \
  extern template size_t bwd_workspace_bytes_t<T, TH, TW>(const FusedAddNormBwdParams&, int);  \
  extern template const char* launch_bwd_t<T, TH, TW>(const FusedAddNormBwdParams&, cudaStream_t, \
                                                      int);
MMM_DECLARE(float, float, float)
MMM_DECLARE(__half, __half, __half)
MMM_DECLARE(__half, __half, float)
MMM_DECLARE(__half, float, __half)
MMM_DECLARE(__half, float, float)
MMM_DECLARE(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)
MMM_DECLARE(__nv_bfloat16, __nv_bfloat16, float)
MMM_DECLARE(__nv_bfloat16, float, __nv_bfloat16)
MMM_DECLARE(__nv_bfloat16, float, float)
#undef MMM_DECLARE

namespace {

// Calls f(T{}, TH{}, TW{}) for the dtypes; returns false for a combination with no kernel
// (fp64, or a residual/weight dtype that is neither x's nor fp32 - the glue rejects those first).
template <typename F>
bool dispatch_dtypes(DType x, DType h, DType w, F&& f) {
  auto with_t = [&](auto t) {
    using T = decltype(t);
    const bool h_same = h == x, w_same = w == x;
    if (!(h_same || h == DType::kFloat32) || !(w_same || w == DType::kFloat32)) return false;
    if (h_same && w_same) f(T{}, T{}, T{});
    else if (h_same) f(T{}, T{}, float{});
    else if (w_same) f(T{}, float{}, T{});
    else f(T{}, float{}, float{});
    return true;
  };
  switch (x) {
    case DType::kFloat32:
      if (h != DType::kFloat32 || w != DType::kFloat32) return false;
      f(float{}, float{}, float{});
      return true;
    case DType::kFloat16: return with_t(__half{});
    case DType::kBFloat16: return with_t(__nv_bfloat16{});
    default: return false;
  }
}

int current_device() {
  int device = 0;
  cudaGetDevice(&device);
  return device;
}

}  // namespace

const char* launch_fused_add_norm_fwd(const FusedAddNormFwdParams& p, void* stream) {
  const char* err = "fused_add_norm: no CUDA kernel for this dtype combination";
  const int device = current_device();
  dispatch_dtypes(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto t, auto th, auto tw) {
    err = launch_fwd_t<decltype(t), decltype(th), decltype(tw)>(p, static_cast<cudaStream_t>(stream), device);
  });
  return err;
}

size_t fused_add_norm_bwd_cuda_workspace_bytes(const FusedAddNormBwdParams& p, int device) {
  size_t bytes = 0;
  dispatch_dtypes(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto t, auto th, auto tw) {
    bytes = bwd_workspace_bytes_t<decltype(t), decltype(th), decltype(tw)>(p, device);
  });
  return bytes;
}

const char* launch_fused_add_norm_bwd(const FusedAddNormBwdParams& p, void* stream) {
  const char* err = "fused_add_norm: no CUDA kernel for this dtype combination";
  const int device = current_device();
  dispatch_dtypes(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto t, auto th, auto tw) {
    err = launch_bwd_t<decltype(t), decltype(th), decltype(tw)>(p, static_cast<cudaStream_t>(stream), device);
  });
  return err;
}

}  // namespace mmm
