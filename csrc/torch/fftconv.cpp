// torch glue for fftconv: schema, argument checks, allocation, CPU/CUDA dispatch.
// The fake kernels and autograd live in python/mmm/ops/fftconv.py (same checks, same messages).
#include <algorithm>
#include <string>
#include <tuple>
#include <type_traits>

#include "fftconv/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;
using std::optional;

constexpr int64_t kMaxLength = int64_t(1) << 20;  // N; L = 2^21 (the CUDA multi-kernel path's scratch)

bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cuda() == b.is_cuda() && a.get_device_index() == b.get_device_index();
}

// u: (B, H, N). Returns N.
int64_t check_u(const Tensor& u, const char* op) {
  STD_TORCH_CHECK(u.dim() == 3, op, ": u must have shape (B, H, N), got ", glue::shape_str(u));
  const int64_t n = u.size(2);
  STD_TORCH_CHECK(n >= 1, op, ": the sequence length N (u's last dimension) must be >= 1, got u of shape ",
                  glue::shape_str(u));
  STD_TORCH_CHECK(n <= kMaxLength, op, ": the sequence length N may be at most ", kMaxLength, ", got ", n);
  const ScalarType t = u.scalar_type();
  const bool low = t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
  if (u.is_cuda()) {
    STD_TORCH_CHECK(low, op, ": u must be float32, float16 or bfloat16 on CUDA (float64 only on the CPU), got ",
                    glue::dtype_str(t));
  } else {
    STD_TORCH_CHECK(u.is_cpu() && (low || t == ScalarType::Double), op,
                    ": u must be a CPU or CUDA float32, float16, bfloat16 or float64 tensor, got ",
                    glue::dtype_str(t), " on ", glue::device_str(u));
  }
  return n;
}

void check_k(const Tensor& k, const Tensor& u, const char* op) {
  const int64_t h = u.size(1), n = u.size(2);
  STD_TORCH_CHECK(k.dim() == 2 && k.size(0) == h && k.size(1) == n, op, ": k must have shape (H, N) = (", h,
                  ", ", n, ") to match u of shape ", glue::shape_str(u), ", got ", glue::shape_str(k));
  STD_TORCH_CHECK(k.scalar_type() == u.scalar_type() || k.scalar_type() == ScalarType::Float, op,
                  ": k must have u's dtype (", glue::dtype_str(u.scalar_type()), ") or float32, got ",
                  glue::dtype_str(k.scalar_type()));
  STD_TORCH_CHECK(same_device(k, u), op, ": k is on ", glue::device_str(k), " but u is on ", glue::device_str(u));
}

optional<Tensor> check_bias(const optional<Tensor>& bias, const Tensor& u, const char* op) {
  if (!bias.has_value()) return bias;
  const int64_t h = u.size(1);
  STD_TORCH_CHECK(bias->dim() == 1 && bias->size(0) == h, op, ": bias must have shape (H,) = (", h,
                  ",) to match u of shape ", glue::shape_str(u), ", got ", glue::shape_str(*bias));
  STD_TORCH_CHECK(bias->scalar_type() == u.scalar_type() || bias->scalar_type() == ScalarType::Float, op,
                  ": bias must have u's dtype (", glue::dtype_str(u.scalar_type()), ") or float32, got ",
                  glue::dtype_str(bias->scalar_type()));
  STD_TORCH_CHECK(same_device(*bias, u), op, ": bias is on ", glue::device_str(*bias), " but u is on ",
                  glue::device_str(u));
  return bias->is_contiguous() ? *bias : torch::stable::contiguous(*bias);
}

// Tensors shaped and typed like u: the gates and the incoming gradient.
void check_like_u(const Tensor& t, const char* name, const Tensor& u, const char* op) {
  STD_TORCH_CHECK(t.dim() == 3 && glue::sizes_of(t) == glue::sizes_of(u), op, ": ", name,
                  " must have u's shape ", glue::shape_str(u), ", got ", glue::shape_str(t));
  STD_TORCH_CHECK(t.scalar_type() == u.scalar_type(), op, ": ", name, " must have u's dtype (",
                  glue::dtype_str(u.scalar_type()), "), got ", glue::dtype_str(t.scalar_type()));
  STD_TORCH_CHECK(same_device(t, u), op, ": ", name, " is on ", glue::device_str(t), " but u is on ",
                  glue::device_str(u));
}

int log2_fft_len(int64_t n) {
  int lg = 1;
  while ((int64_t(1) << lg) < 2 * n) ++lg;
  return lg;
}

// Fills the shared part of the params; `keep` holds the row views (copies of inputs whose
// leading dims do not collapse) alive until the kernels have run.
void fill_common(FFTConvParams& p, const Tensor& u_in, const Tensor& k_in, const optional<Tensor>& bias,
                 const optional<Tensor>& pregate, const optional<Tensor>& postgate, std::vector<Tensor>& keep) {
  const int64_t n = u_in.size(2);
  p.batch = u_in.size(0);
  p.channels = u_in.size(1);
  p.n = n;
  p.log2_fft = log2_fft_len(n);
  p.dtype = glue::to_dtype(u_in.scalar_type());
  auto rows = [&](const Tensor& t, const void*& ptr, int64_t& rs) {
    auto [v, s] = glue::as_rows(t, n);
    keep.push_back(v);
    ptr = v.data_ptr();
    rs = s;
  };
  rows(u_in, p.u, p.u_rs);
  if (pregate) rows(*pregate, p.pregate, p.pre_rs);
  if (postgate) rows(*postgate, p.postgate, p.post_rs);
  rows(k_in, p.k, p.k_rs);
  p.k_dtype = glue::to_dtype(k_in.scalar_type());
  if (bias) {
    keep.push_back(*bias);
    p.bias = bias->data_ptr();
    p.bias_dtype = glue::to_dtype(bias->scalar_type());
  }
}

// k's spectrum on the CPU, (H, L/2 + 1) complex in the arithmetic type.
Tensor kspec_cpu(const FFTConvParams& p, const Tensor& like) {
  const size_t bytes = fftconv_cpu_kspec_bytes(p);
  Tensor ks = glue::empty_like_shape(like, {int64_t((bytes + 7) / 8)}, ScalarType::Double);
  void* ptr = ks.data_ptr();
  torch::stable::parallel_for(0, fftconv_cpu_groups(p), 1, [&](int64_t b, int64_t e) { fftconv_kspec_cpu(p, ptr, b, e); });
  return ks;
}

// Both directions on CUDA: the launcher's workspace (fp32, 16-byte aligned), then one launch.
template <typename P>
void run_cuda(const Tensor& u, const P& p) {
  constexpr bool fwd = std::is_same_v<P, FFTConvParams>;
  const char* direction = fwd ? "forward" : "backward";
#ifdef MMM_WITH_CUDA
  const int32_t device = u.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  size_t bytes;
  if constexpr (fwd) bytes = fftconv_cuda_fwd_workspace_bytes(p, device);
  else bytes = fftconv_cuda_bwd_workspace_bytes(p, device);
  Tensor ws = glue::empty_like_shape(u, {int64_t((bytes + 15) / 16) * 4}, ScalarType::Float);
  void* wptr = bytes ? ws.data_ptr() : nullptr;
  void* stream = glue::current_cuda_stream(device);
  const char* err;
  if constexpr (fwd) err = launch_fftconv_fwd(p, wptr, stream);
  else err = launch_fftconv_bwd(p, wptr, stream);
  STD_TORCH_CHECK(err == nullptr, "fftconv (CUDA ", direction, "): ", err ? err : "");
#else
  (void)u, (void)p;
  STD_TORCH_CHECK(false, "fftconv (", direction, "): mmm was built without CUDA kernels");
#endif
}

Tensor fftconv(const Tensor& u, const Tensor& k, const optional<Tensor>& bias_in, const optional<Tensor>& pregate,
               const optional<Tensor>& postgate) {
  constexpr const char* op = "fftconv";
  check_u(u, op);
  check_k(k, u, op);
  const optional<Tensor> bias = check_bias(bias_in, u, op);
  if (pregate) check_like_u(*pregate, "pregate", u, op);
  if (postgate) check_like_u(*postgate, "postgate", u, op);
  Tensor y = glue::empty_like_shape(u, glue::sizes_of(u), u.scalar_type());
  if (u.numel() == 0) return y;

  FFTConvParams p;
  std::vector<Tensor> keep;
  fill_common(p, u, k, bias, pregate, postgate, keep);
  p.y = y.data_ptr();
  if (u.is_cuda()) {
    run_cuda(u, p);
  } else {
    Tensor ks = kspec_cpu(p, u);
    const void* kptr = ks.data_ptr();
    const int64_t tasks = p.batch * fftconv_cpu_groups(p);
    const int64_t grain = std::max<int64_t>(1, 1024 / p.half());
    torch::stable::parallel_for(0, tasks, grain, [&](int64_t b, int64_t e) { fftconv_fwd_cpu(p, kptr, b, e); });
  }
  return y;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fftconv_backward(
    const Tensor& grad_y, const Tensor& u, const Tensor& k, const optional<Tensor>& bias_in,
    const optional<Tensor>& pregate, const optional<Tensor>& postgate, bool need_u, bool need_k, bool need_bias,
    bool need_pregate, bool need_postgate) {
  constexpr const char* op = "fftconv_backward";
  check_u(u, op);
  check_like_u(grad_y, "grad_y", u, op);
  check_k(k, u, op);
  const optional<Tensor> bias = check_bias(bias_in, u, op);
  if (pregate) check_like_u(*pregate, "pregate", u, op);
  if (postgate) check_like_u(*postgate, "postgate", u, op);
  need_bias = need_bias && bias.has_value();
  need_pregate = need_pregate && pregate.has_value();
  need_postgate = need_postgate && postgate.has_value();

  const auto sizes = glue::sizes_of(u);
  const std::vector<int64_t> none{0};
  const ScalarType t = u.scalar_type();
  Tensor du = glue::empty_like_shape(u, need_u ? sizes : none, t);
  Tensor dk = glue::empty_like_shape(u, need_k ? glue::sizes_of(k) : none, k.scalar_type());
  Tensor dbias = glue::empty_like_shape(u, need_bias ? glue::sizes_of(*bias) : none,
                                        bias ? bias->scalar_type() : t);
  Tensor dpre = glue::empty_like_shape(u, need_pregate ? sizes : none, t);
  Tensor dpost = glue::empty_like_shape(u, need_postgate ? sizes : none, t);
  if (!(need_u || need_k || need_bias || need_pregate || need_postgate) || u.size(1) == 0) {
    return {du, dk, dbias, dpre, dpost};
  }

  FFTConvBwdParams p;
  std::vector<Tensor> keep;
  fill_common(p, u, k, bias, pregate, postgate, keep);
  auto [g, g_rs] = glue::as_rows(grad_y, p.n);
  keep.push_back(g);
  p.dy = g.data_ptr();
  p.dy_rs = g_rs;
  p.du = need_u ? du.data_ptr() : nullptr;
  p.dk = need_k ? dk.data_ptr() : nullptr;
  p.dbias = need_bias ? dbias.data_ptr() : nullptr;
  p.dpregate = need_pregate ? dpre.data_ptr() : nullptr;
  p.dpostgate = need_postgate ? dpost.data_ptr() : nullptr;
  if (u.is_cuda()) {
    run_cuda(u, p);
  } else {
    Tensor ks = kspec_cpu(p, u);
    const void* kptr = ks.data_ptr();
    const size_t bytes = fftconv_bwd_cpu_workspace_bytes(p);
    Tensor ws = glue::empty_like_shape(u, {int64_t((bytes + 7) / 8)}, ScalarType::Double);
    void* wptr = bytes ? ws.data_ptr() : nullptr;
    const int64_t tasks = fftconv_bwd_cpu_tasks(p);
    torch::stable::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) fftconv_bwd_cpu_task(p, kptr, wptr, q);
    });
    if (p.dk || p.dbias)
      torch::stable::parallel_for(0, fftconv_cpu_groups(p), 1, [&](int64_t b, int64_t e) {
        fftconv_bwd_cpu_finalize(p, wptr, b, e);
      });
  }
  return {du, dk, dbias, dpre, dpost};
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) {
  m.def("fftconv(Tensor u, Tensor k, Tensor? bias=None, Tensor? pregate=None, Tensor? postgate=None) -> Tensor");
  m.def(
      "fftconv_backward(Tensor grad_y, Tensor u, Tensor k, Tensor? bias, Tensor? pregate, Tensor? postgate, *, "
      "bool need_u, bool need_k, bool need_bias, bool need_pregate, bool need_postgate) "
      "-> (Tensor grad_u, Tensor grad_k, Tensor grad_bias, Tensor grad_pregate, Tensor grad_postgate)");
}

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) {
  m.impl("fftconv", TORCH_BOX(&mmm::fftconv));
  m.impl("fftconv_backward", TORCH_BOX(&mmm::fftconv_backward));
}

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) {
  m.impl("fftconv", TORCH_BOX(&mmm::fftconv));
  m.impl("fftconv_backward", TORCH_BOX(&mmm::fftconv_backward));
}
#endif
