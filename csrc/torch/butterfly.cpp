// torch glue for butterfly_multiply: schemas, checks, allocation, CPU/CUDA dispatch.
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "butterfly/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;

constexpr int64_t kMaxLogN = 20;  // n <= 2^20: the CPU backward keeps L+1 rows of n per thread

bool is_low(ScalarType t) { return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16; }

// Checks x and twiddle (messages name the argument) and returns the params with shapes and
// dtypes filled in; twiddle is returned contiguous through `tw`.
ButterflyParams check(const Tensor& x, const Tensor& tw_in, bool increasing_stride, const char* op, Tensor& tw) {
  STD_TORCH_CHECK(x.dim() >= 2, op, ": x must have at least 2 dimensions (..., nstacks, n), got shape ",
                  glue::shape_str(x));
  STD_TORCH_CHECK(tw_in.dim() == 6, op, ": twiddle must be 6-D (nstacks, nblocks, log_n, n/2, 2, 2), got shape ",
                  glue::shape_str(tw_in));
  const int64_t nstacks = tw_in.size(0), nblocks = tw_in.size(1), log_n = tw_in.size(2);
  STD_TORCH_CHECK(nstacks >= 1 && nblocks >= 1, op, ": twiddle must have nstacks >= 1 and nblocks >= 1, got shape ",
                  glue::shape_str(tw_in));
  STD_TORCH_CHECK(log_n >= 1 && log_n <= kMaxLogN, op, ": twiddle.shape[2] (log_n) must be in [1, ", kMaxLogN,
                  "], got shape ", glue::shape_str(tw_in));
  const int64_t n = int64_t(1) << log_n;
  STD_TORCH_CHECK(tw_in.size(3) == n / 2 && tw_in.size(4) == 2 && tw_in.size(5) == 2, op,
                  ": twiddle of shape ", glue::shape_str(tw_in), " must be (nstacks, nblocks, log_n, n/2, 2, 2) with n = 2^log_n = ",
                  n, ", i.e. twiddle.shape[3] = ", n / 2, " (the butterfly size n must be a power of two)");
  const int64_t d = x.dim();
  STD_TORCH_CHECK(x.size(d - 2) == nstacks, op, ": x.shape[-2] must equal twiddle.shape[0] (nstacks) = ", nstacks,
                  ", got x of shape ", glue::shape_str(x));
  STD_TORCH_CHECK(x.size(d - 1) >= 1, op, ": x's last dimension must be >= 1, got x of shape ", glue::shape_str(x));

  const ScalarType xt = x.scalar_type(), wt = tw_in.scalar_type();
  if (x.is_cuda()) {
    STD_TORCH_CHECK(is_low(xt) || xt == ScalarType::ComplexFloat, op,
                    ": x must be float32, float16, bfloat16 or complex64 on CUDA (float64 and complex128 only on the CPU), got ",
                    glue::dtype_str(xt));
  } else {
    STD_TORCH_CHECK(x.is_cpu() && (is_low(xt) || xt == ScalarType::Double || xt == ScalarType::ComplexFloat ||
                                   xt == ScalarType::ComplexDouble),
                    op, ": x must be a CPU or CUDA float32, float16, bfloat16, float64, complex64 or complex128 tensor, got ",
                    glue::dtype_str(xt), " on ", glue::device_str(x));
  }
  const bool tw_ok = wt == xt || (wt == ScalarType::Float && (xt == ScalarType::Half || xt == ScalarType::BFloat16));
  STD_TORCH_CHECK(tw_ok, op, ": twiddle must have x's dtype (", glue::dtype_str(xt), ")",
                  (xt == ScalarType::Half || xt == ScalarType::BFloat16) ? " or float32" : "", ", got ",
                  glue::dtype_str(wt));
  STD_TORCH_CHECK(tw_in.is_cuda() == x.is_cuda() && tw_in.get_device_index() == x.get_device_index(), op,
                  ": twiddle is on ", glue::device_str(tw_in), " but x is on ", glue::device_str(x));

  tw = tw_in.is_contiguous() ? tw_in : torch::stable::contiguous(tw_in);
  // The CUDA kernels read a pair's 2x2 matrix with one vector load: a view into the middle of
  // a tensor (storage offset) may break that alignment, so copy it then.
  if (reinterpret_cast<uintptr_t>(tw.data_ptr()) % 32 != 0) tw = torch::stable::clone(tw);
  ButterflyParams p;
  p.nstacks = nstacks;
  p.nblocks = nblocks;
  p.log_n = log_n;
  p.n = n;
  p.n_in = x.size(d - 1);
  p.batch = glue::rows_of(x, p.n_in) / nstacks;
  p.increasing_stride = increasing_stride;
  p.x_dtype = glue::to_dtype(xt);
  p.tw_dtype = glue::to_dtype(wt);
  p.twiddle = tw.data_ptr();
  return p;
}

CpuParallelFor torch_parallel_for() {
  return [](int64_t b, int64_t e, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    torch::stable::parallel_for(b, e, grain, [&](int64_t lo, int64_t hi) { fn(lo, hi); });
  };
}

#ifdef MMM_WITH_CUDA
void run_cuda(const ButterflyParams& p, bool backward, const Tensor& like, const char* op) {
  const int32_t device = like.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  const size_t bytes = butterfly_cuda_workspace_bytes(p, backward, device);
  Tensor ws = glue::empty_like_shape(like, {int64_t((bytes + 15) / 16) * 4}, ScalarType::Float);
  void* stream = glue::current_cuda_stream(device);
  void* w = bytes ? ws.data_ptr() : nullptr;
  const char* err = backward ? launch_butterfly_backward(p, w, stream) : launch_butterfly_forward(p, w, stream);
  STD_TORCH_CHECK(err == nullptr, op, " (CUDA): ", err ? err : "");
}
#endif

Tensor butterfly_multiply(const Tensor& x_in, const Tensor& twiddle, bool increasing_stride) {
  const char* op = "butterfly_multiply";
  Tensor tw;
  ButterflyParams p = check(x_in, twiddle, increasing_stride, op, tw);
  std::vector<int64_t> ysize = glue::sizes_of(x_in);
  ysize.back() = p.n;
  Tensor y = glue::empty_like_shape(x_in, ysize, x_in.scalar_type());
  if (p.batch == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, p.n_in);
  p.x = x.data_ptr();
  p.x_row_stride = x_rs;
  p.y = y.data_ptr();
  if (x.is_cuda()) {
#ifdef MMM_WITH_CUDA
    run_cuda(p, false, x, op);
#else
    STD_TORCH_CHECK(false, op, ": mmm was built without CUDA kernels");
#endif
  } else {
    butterfly_forward_cpu(p, torch_parallel_for());
  }
  return y;
}

std::tuple<Tensor, Tensor> butterfly_multiply_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& twiddle,
                                                       bool increasing_stride) {
  const char* op = "butterfly_multiply_backward";
  Tensor tw;
  ButterflyParams p = check(x_in, twiddle, increasing_stride, op, tw);
  std::vector<int64_t> ysize = glue::sizes_of(x_in);
  ysize.back() = p.n;
  STD_TORCH_CHECK(glue::sizes_of(dy_in) == ysize && dy_in.scalar_type() == x_in.scalar_type() &&
                      dy_in.is_cuda() == x_in.is_cuda(),
                  op, ": grad must have the output's shape, dtype and device, got shape ", glue::shape_str(dy_in));
  // Columns of x past n were trimmed away: their gradient is zero, and only the kernels'
  // columns < n are written.
  Tensor dx = p.n_in > p.n ? torch::stable::new_zeros(x_in, glue::sizes_of(x_in))
                           : glue::empty_like_shape(x_in, glue::sizes_of(x_in), x_in.scalar_type());
  Tensor dtw = glue::empty_like_shape(tw, glue::sizes_of(tw), tw.scalar_type());
  if (p.batch == 0) {
    torch::stable::zero_(dtw);
    return {dx, dtw};
  }
  auto [x, x_rs] = glue::as_rows(x_in, p.n_in);
  auto [dy, dy_rs] = glue::as_rows(dy_in, p.n);
  p.x = x.data_ptr();
  p.x_row_stride = x_rs;
  p.dy = dy.data_ptr();
  p.dy_row_stride = dy_rs;
  p.dx = dx.data_ptr();
  p.dtwiddle = dtw.data_ptr();
  if (x.is_cuda()) {
#ifdef MMM_WITH_CUDA
    run_cuda(p, true, x, op);
#else
    STD_TORCH_CHECK(false, op, ": mmm was built without CUDA kernels");
#endif
  } else {
    butterfly_backward_cpu(p, torch_parallel_for());
  }
  return {dx, dtw};
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) {
  m.def("butterfly_multiply(Tensor x, Tensor twiddle, bool increasing_stride=True) -> Tensor");
  m.def("butterfly_multiply_backward(Tensor grad, Tensor x, Tensor twiddle, bool increasing_stride) "
        "-> (Tensor grad_x, Tensor grad_twiddle)");
}

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) {
  m.impl("butterfly_multiply", TORCH_BOX(&mmm::butterfly_multiply));
  m.impl("butterfly_multiply_backward", TORCH_BOX(&mmm::butterfly_multiply_backward));
}

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) {
  m.impl("butterfly_multiply", TORCH_BOX(&mmm::butterfly_multiply));
  m.impl("butterfly_multiply_backward", TORCH_BOX(&mmm::butterfly_multiply_backward));
}
#endif
