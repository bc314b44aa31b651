// torch glue for fused_add_norm: schema, argument checks, allocation, CPU/CUDA dispatch.
// The fake kernels and autograd live in python/mmm/ops/fused_add_norm.py.
#include <algorithm>
#include <string>
#include <tuple>

#include "fused_add_norm/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;
using std::optional;

Activation parse_activation(const std::string& a) {
  if (a == "none") return Activation::kNone;
  if (a == "gelu") return Activation::kGelu;
  if (a == "gelu_tanh") return Activation::kGeluTanh;
  STD_TORCH_CHECK(false, "fused_add_norm: activation must be 'none', 'gelu' or 'gelu_tanh', got '",
                  a, "'");
  return Activation::kNone;
}

bool is_low_precision(ScalarType t) { return t == ScalarType::Half || t == ScalarType::BFloat16; }

void check_x(const Tensor& x) {
  STD_TORCH_CHECK(x.dim() >= 1, "fused_add_norm: x must have at least one dimension, got a 0-dim tensor");
  STD_TORCH_CHECK(x.size(x.dim() - 1) >= 1,
                  "fused_add_norm: the normalized (last) dimension N of x must be >= 1, got x of shape ",
                  glue::shape_str(x));
  const ScalarType t = x.scalar_type();
  if (x.is_cuda()) {
    STD_TORCH_CHECK(t == ScalarType::Float || is_low_precision(t),
                    "fused_add_norm: x must be float32, float16 or bfloat16 on CUDA (float64 only on the CPU), got ",
                    glue::dtype_str(t));
  } else {
    STD_TORCH_CHECK(x.is_cpu(), "fused_add_norm: x must be a CPU or CUDA tensor, got ", glue::device_str(x));
    STD_TORCH_CHECK(t == ScalarType::Float || t == ScalarType::Double || is_low_precision(t),
                    "fused_add_norm: x must be float32, float16, bfloat16 or float64, got ", glue::dtype_str(t));
  }
}

// weight / bias: (N,), x's dtype or fp32, x's device. Returns a unit-stride tensor.
optional<Tensor> check_param(const optional<Tensor>& w, const char* name, const Tensor& x, int64_t n) {
  if (!w.has_value()) return w;
  STD_TORCH_CHECK(w->dim() == 1 && w->size(0) == n, "fused_add_norm: ", name,
                  " must have shape (N,) = (", n, ",) to match x's last dimension, got ", glue::shape_str(*w));
  STD_TORCH_CHECK(w->scalar_type() == x.scalar_type() || w->scalar_type() == ScalarType::Float,
                  "fused_add_norm: ", name, " must have x's dtype (", glue::dtype_str(x.scalar_type()),
                  ") or float32, got ", glue::dtype_str(w->scalar_type()));
  STD_TORCH_CHECK(w->is_cuda() == x.is_cuda() && w->get_device_index() == x.get_device_index(),
                  "fused_add_norm: ", name, " is on ", glue::device_str(*w), " but x is on ", glue::device_str(x));
  return w->stride(0) == 1 ? *w : torch::stable::contiguous(*w);
}

void check_same(const Tensor& t, const char* name, const Tensor& x) {
  STD_TORCH_CHECK(t.dim() == x.dim() && glue::sizes_of(t) == glue::sizes_of(x), "fused_add_norm: ", name,
                  " must have x's shape ", glue::shape_str(x), ", got ", glue::shape_str(t));
  STD_TORCH_CHECK(t.is_cuda() == x.is_cuda() && t.get_device_index() == x.get_device_index(),
                  "fused_add_norm: ", name, " is on ", glue::device_str(t), " but x is on ", glue::device_str(x));
}

uint64_t read_seed(const optional<Tensor>& seed, double dropout_p) {
  if (dropout_p == 0.0) return 0;
  STD_TORCH_CHECK(seed.has_value(),
                  "fused_add_norm: dropout_seed (a CPU int64 tensor with one element) is required when dropout_p > 0; "
                  "mmm.fused_add_norm draws it from torch's default generator");
  STD_TORCH_CHECK(seed->is_cpu() && seed->scalar_type() == ScalarType::Long && seed->numel() == 1,
                  "fused_add_norm: dropout_seed must be a CPU int64 tensor with one element");
  return static_cast<uint64_t>(*static_cast<const int64_t*>(seed->data_ptr()));
}

// The dtype of h (residual_out): fp32 when residual_in_fp32, else the residual's (x's or fp32),
// else x's.
ScalarType h_dtype_for(const Tensor& x, const optional<Tensor>& residual, bool residual_in_fp32) {
  if (residual_in_fp32) return ScalarType::Float;
  return residual.has_value() ? residual->scalar_type() : x.scalar_type();
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_add_norm(
    const Tensor& x_in, const optional<Tensor>& weight_in, const optional<Tensor>& bias_in,
    const optional<Tensor>& residual_in, const optional<Tensor>& dropout_seed, double eps, bool rms,
    std::string activation, double dropout_p, bool prenorm, bool residual_in_fp32, bool inference) {
  check_x(x_in);
  const int64_t n = x_in.size(x_in.dim() - 1);
  const optional<Tensor> weight = check_param(weight_in, "weight", x_in, n);
  const optional<Tensor> bias = check_param(bias_in, "bias", x_in, n);
  STD_TORCH_CHECK(eps >= 0.0, "fused_add_norm: eps must be >= 0, got ", eps);
  STD_TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fused_add_norm: dropout_p must be in [0, 1), got ", dropout_p);
  const Activation act = parse_activation(activation);
  const uint64_t seed = read_seed(dropout_seed, dropout_p);
  const ScalarType h_dtype = h_dtype_for(x_in, residual_in, residual_in_fp32);

  optional<Tensor> residual = residual_in;
  if (residual.has_value()) {
    check_same(*residual, "residual", x_in);
    const ScalarType rt = residual->scalar_type();
    STD_TORCH_CHECK(rt == x_in.scalar_type() || rt == ScalarType::Float, "fused_add_norm: residual must have x's dtype (",
                    glue::dtype_str(x_in.scalar_type()), ") or float32, got ", glue::dtype_str(rt));
    // The kernels read the residual in h's dtype: a residual in x's dtype with residual_in_fp32
    // is converted once here.
    if (rt != h_dtype) residual = torch::stable::to(*residual, h_dtype);
  }

  const auto sizes = glue::sizes_of(x_in);
  const int64_t rows = glue::rows_of(x_in, n);
  // h is an output with prenorm; otherwise it is kept for backward only, where it differs from x.
  const bool store_h =
      prenorm || (!inference && (residual.has_value() || dropout_p > 0.0 || h_dtype != x_in.scalar_type()));
  const ScalarType stat_dtype = x_in.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;

  Tensor out = glue::empty_like_shape(x_in, sizes, x_in.scalar_type());
  Tensor h_out = glue::empty_like_shape(x_in, store_h ? sizes : std::vector<int64_t>{0}, h_dtype);
  Tensor mean = glue::empty_like_shape(x_in, {rms ? 0 : rows}, stat_dtype);
  Tensor rstd = glue::empty_like_shape(x_in, {rows}, stat_dtype);
  if (rows == 0) return {out, h_out, mean, rstd};

  auto [x, x_stride] = glue::as_rows(x_in, n);
  FusedAddNormFwdParams p;
  p.rows = rows;
  p.cols = n;
  p.x = x.data_ptr();
  p.x_row_stride = x_stride;
  p.x_dtype = glue::to_dtype(x.scalar_type());
  Tensor res_rows = x;  // keeps a converted/copied residual alive until the kernel has run
  if (residual.has_value()) {
    auto [r, r_stride] = glue::as_rows(*residual, n);
    res_rows = r;
    p.residual = r.data_ptr();
    p.res_row_stride = r_stride;
  }
  p.weight = weight ? weight->data_ptr() : nullptr;
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.w_dtype = weight ? glue::to_dtype(weight->scalar_type())
                     : bias ? glue::to_dtype(bias->scalar_type()) : p.x_dtype;
  STD_TORCH_CHECK(!(weight && bias) || weight->scalar_type() == bias->scalar_type(),
                  "fused_add_norm: weight and bias must have the same dtype, got ",
                  glue::dtype_str(weight->scalar_type()), " and ", glue::dtype_str(bias->scalar_type()));
  p.out = out.data_ptr();
  p.out_row_stride = n;
  p.h_out = store_h ? h_out.data_ptr() : nullptr;
  p.h_row_stride = n;
  p.h_dtype = glue::to_dtype(h_dtype);
  p.mean = rms ? nullptr : mean.data_ptr();
  p.rstd = rstd.data_ptr();
  p.eps = eps;
  p.rms = rms;
  p.act = act;
  p.dropout_p = dropout_p;
  p.seed = seed;

  if (x.is_cuda()) {
#ifdef MMM_WITH_CUDA
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    const char* err = launch_fused_add_norm_fwd(p, glue::current_cuda_stream(x.get_device_index()));
    STD_TORCH_CHECK(err == nullptr, "fused_add_norm (CUDA forward): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, "fused_add_norm: mmm was built without CUDA kernels");
#endif
  } else {
    const int64_t grain = std::max<int64_t>(1, 32768 / n);
    torch::stable::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { fused_add_norm_fwd_cpu(p, b, e); });
  }
  return {out, h_out, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_add_norm_backward(
    const Tensor& grad_out_in, const optional<Tensor>& grad_residual_out, const Tensor& h_in,
    const optional<Tensor>& weight_in, const optional<Tensor>& bias_in, const Tensor& mean,
    const Tensor& rstd, const optional<Tensor>& dropout_seed, bool has_residual, bool rms,
    std::string activation, double dropout_p) {
  check_x(grad_out_in);
  const int64_t n = grad_out_in.size(grad_out_in.dim() - 1);
  const optional<Tensor> weight = check_param(weight_in, "weight", grad_out_in, n);
  const optional<Tensor> bias = check_param(bias_in, "bias", grad_out_in, n);
  check_same(h_in, "h", grad_out_in);
  const ScalarType h_dtype = h_in.scalar_type();
  STD_TORCH_CHECK(h_dtype == grad_out_in.scalar_type() || h_dtype == ScalarType::Float,
                  "fused_add_norm_backward: h must have grad_out's dtype or float32");
  const int64_t rows = glue::rows_of(grad_out_in, n);
  const ScalarType stat_dtype = grad_out_in.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  STD_TORCH_CHECK(rstd.numel() == rows && rstd.scalar_type() == stat_dtype && rstd.is_contiguous() &&
                      (rms || (mean.numel() == rows && mean.scalar_type() == stat_dtype && mean.is_contiguous())),
                  "fused_add_norm_backward: mean/rstd do not match grad_out");
  if (grad_residual_out.has_value()) {
    check_same(*grad_residual_out, "grad_residual_out", grad_out_in);
    STD_TORCH_CHECK(grad_residual_out->scalar_type() == h_dtype,
                    "fused_add_norm_backward: grad_residual_out must have h's dtype");
  }
  const Activation act = parse_activation(activation);
  const uint64_t seed = read_seed(dropout_seed, dropout_p);

  const auto sizes = glue::sizes_of(grad_out_in);
  Tensor dx = glue::empty_like_shape(grad_out_in, sizes, grad_out_in.scalar_type());
  Tensor dres = glue::empty_like_shape(grad_out_in, has_residual ? sizes : std::vector<int64_t>{0}, h_dtype);
  Tensor dw = glue::empty_like_shape(grad_out_in, {weight ? n : 0}, weight ? weight->scalar_type() : h_dtype);
  Tensor db = glue::empty_like_shape(grad_out_in, {bias ? n : 0}, bias ? bias->scalar_type() : h_dtype);

  auto [dout, dout_stride] = glue::as_rows(grad_out_in, n);
  auto [h, h_stride] = glue::as_rows(h_in, n);
  FusedAddNormBwdParams p;
  p.rows = rows;
  p.cols = n;
  p.dout = dout.data_ptr();
  p.dout_row_stride = dout_stride;
  Tensor gro_rows = dout;
  if (grad_residual_out.has_value()) {
    auto [g, g_stride] = glue::as_rows(*grad_residual_out, n);
    gro_rows = g;
    p.dh_out = g.data_ptr();
    p.dh_out_row_stride = g_stride;
  }
  p.h = h.data_ptr();
  p.h_row_stride = h_stride;
  p.x_dtype = glue::to_dtype(grad_out_in.scalar_type());
  p.h_dtype = glue::to_dtype(h_dtype);
  p.weight = weight ? weight->data_ptr() : nullptr;
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.w_dtype = weight ? glue::to_dtype(weight->scalar_type())
                     : bias ? glue::to_dtype(bias->scalar_type()) : p.x_dtype;
  p.mean = rms ? nullptr : mean.data_ptr();
  p.rstd = rstd.data_ptr();
  p.dx = dx.data_ptr();
  p.dx_row_stride = n;
  p.dresidual = has_residual ? dres.data_ptr() : nullptr;
  p.dres_row_stride = n;
  p.dweight = weight ? dw.data_ptr() : nullptr;
  p.dbias = bias ? db.data_ptr() : nullptr;
  p.rms = rms;
  p.act = act;
  p.dropout_p = dropout_p;
  p.seed = seed;

  if (dout.is_cuda()) {
#ifdef MMM_WITH_CUDA
    const int32_t device = dout.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);
    const size_t bytes = fused_add_norm_bwd_cuda_workspace_bytes(p, device);
    Tensor ws = glue::empty_like_shape(dout, {int64_t((bytes + 3) / 4)}, ScalarType::Float);
    p.workspace = bytes ? ws.data_ptr() : nullptr;
    const char* err = launch_fused_add_norm_bwd(p, glue::current_cuda_stream(device));
    STD_TORCH_CHECK(err == nullptr, "fused_add_norm (CUDA backward): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, "fused_add_norm: mmm was built without CUDA kernels");
#endif
  } else {
    const size_t bytes = fused_add_norm_bwd_cpu_workspace_bytes(p);
    Tensor ws = glue::empty_like_shape(dout, {int64_t((bytes + 7) / 8)}, ScalarType::Double);
    p.workspace = bytes ? ws.data_ptr() : nullptr;
    const int64_t parts = fused_add_norm_bwd_cpu_partitions(p);
    torch::stable::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) fused_add_norm_bwd_cpu_partition(p, q);
    });
    if (weight || bias)
      torch::stable::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) { fused_add_norm_bwd_cpu_finalize(p, b, e); });
  }
  return {dx, dres, dw, db};
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) {
  m.def(
      "fused_add_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual=None, Tensor? dropout_seed=None, "
      "*, float eps=1e-05, bool rms=False, str activation=\"none\", float dropout_p=0.0, bool prenorm=False, "
      "bool residual_in_fp32=False, bool inference=False) "
      "-> (Tensor out, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def(
      "fused_add_norm_backward(Tensor grad_out, Tensor? grad_residual_out, Tensor h, Tensor? weight, "
      "Tensor? bias, Tensor mean, Tensor rstd, Tensor? dropout_seed, *, bool has_residual, bool rms, "
      "str activation, float dropout_p) "
      "-> (Tensor grad_x, Tensor grad_residual, Tensor grad_weight, Tensor grad_bias)");
}

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) {
  m.impl("fused_add_norm", TORCH_BOX(&mmm::fused_add_norm));
  m.impl("fused_add_norm_backward", TORCH_BOX(&mmm::fused_add_norm_backward));
}

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) {
  m.impl("fused_add_norm", TORCH_BOX(&mmm::fused_add_norm));
  m.impl("fused_add_norm_backward", TORCH_BOX(&mmm::fused_add_norm_backward));
}
#endif
