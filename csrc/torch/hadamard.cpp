// torch glue for hadamard_transform: schema, checks, allocation, CPU/CUDA dispatch.
#include <algorithm>

#include "hadamard/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;

constexpr int64_t kMaxLength = int64_t(1) << 19;  // the CUDA two-pass limit on every sm_80+ GPU

Tensor hadamard_transform(const Tensor& x_in, double scale) {
  STD_TORCH_CHECK(x_in.dim() >= 1, "hadamard_transform: x must have at least one dimension, got a 0-dim tensor");
  const int64_t n = x_in.size(x_in.dim() - 1);
  STD_TORCH_CHECK(n >= 1, "hadamard_transform: the last dimension of x must be >= 1, got x of shape ",
                  glue::shape_str(x_in));
  STD_TORCH_CHECK(n <= kMaxLength, "hadamard_transform: the last dimension of x may be at most ", kMaxLength,
                  ", got ", n);
  const ScalarType t = x_in.scalar_type();
  const bool low = t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
  if (x_in.is_cuda()) {
    STD_TORCH_CHECK(low, "hadamard_transform: x must be float32, float16 or bfloat16 on CUDA (float64 only on the CPU), got ",
                    glue::dtype_str(t));
  } else {
    STD_TORCH_CHECK(x_in.is_cpu() && (low || t == ScalarType::Double),
                    "hadamard_transform: x must be a CPU or CUDA float32, float16, bfloat16 or float64 tensor, got ",
                    glue::dtype_str(t), " on ", glue::device_str(x_in));
  }
  Tensor y = glue::empty_like_shape(x_in, glue::sizes_of(x_in), t);
  const int64_t rows = glue::rows_of(x_in, n);
  if (rows == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, n);
  HadamardParams p;
  p.rows = rows;
  p.n = n;
  p.n_pow2 = 1;
  while (p.n_pow2 < n) p.n_pow2 *= 2;
  p.x = x.data_ptr();
  p.x_row_stride = x_rs;
  p.y = y.data_ptr();
  p.y_row_stride = n;
  p.dtype = glue::to_dtype(t);
  p.scale = scale;
  if (x.is_cuda()) {
#ifdef MMM_WITH_CUDA
    const int32_t device = x.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);
    const size_t bytes = hadamard_cuda_workspace_bytes(p, device);
    Tensor ws = glue::empty_like_shape(x, {int64_t((bytes + 3) / 4)}, ScalarType::Float);
    const char* err = launch_hadamard(p, bytes ? ws.data_ptr() : nullptr, glue::current_cuda_stream(device));
    STD_TORCH_CHECK(err == nullptr, "hadamard_transform (CUDA): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, "hadamard_transform: mmm was built without CUDA kernels");
#endif
  } else {
    const int64_t grain = std::max<int64_t>(1, 16384 / p.n_pow2);
    torch::stable::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { hadamard_cpu(p, b, e); });
  }
  return y;
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) { m.def("hadamard_transform(Tensor x, float scale=1.0) -> Tensor"); }

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) { m.impl("hadamard_transform", TORCH_BOX(&mmm::hadamard_transform)); }

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) { m.impl("hadamard_transform", TORCH_BOX(&mmm::hadamard_transform)); }
#endif
