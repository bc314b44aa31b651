// torch glue for fused_attention: schemas, argument checks, allocation, CPU/CUDA dispatch.
// The fake kernels, autograd and the public op mmm::fused_attention (defined in Python on top of
// fused_attention_forward) live in python/mmm/ops/attention.py, whose _check mirrors check_qkv.
//
//   fused_attention_forward(q, k, v, scale, window_left, window_right, deterministic=True)
//       -> (out, lse)
//   fused_attention_backward(grad_out, grad_lse?, q, k, v, out, lse, scale, window_left,
//                            window_right, deterministic=True) -> (grad_q, grad_k, grad_v)
#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "attention/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;
using std::optional;

constexpr int64_t kMaxHeadDim = 256;

struct QKVShape {
  int64_t batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim;
};

bool is_low_precision(ScalarType t) { return t == ScalarType::Half || t == ScalarType::BFloat16; }

bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cpu() == b.is_cpu() && a.is_cuda() == b.is_cuda() &&
         (!a.is_cuda() || a.get_device_index() == b.get_device_index());
}

// The one place the inputs are checked, for every device. Mirrored, message for message, by _check in
// python/mmm/ops/attention.py (the fake kernel that torch.compile traces).
QKVShape check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window_left, int64_t window_right) {
  const char* names[3] = {"q", "k", "v"};
  const Tensor* ts[3] = {&q, &k, &v};
  for (int i = 0; i < 3; ++i)
    STD_TORCH_CHECK(ts[i]->dim() == 4, "fused_attention: ", names[i],
                    " must be 4-D (batch, heads, seqlen, head_dim), got shape ", glue::shape_str(*ts[i]));
  for (int i = 1; i < 3; ++i)
    STD_TORCH_CHECK(same_device(*ts[i], q), "fused_attention: ", names[i], " is on ", glue::device_str(*ts[i]),
                    " but q is on ", glue::device_str(q));
  const ScalarType t = q.scalar_type();
  if (q.is_cuda()) {
    STD_TORCH_CHECK(is_low_precision(t), "fused_attention: q must be float16 or bfloat16 on CUDA, got ",
                    glue::dtype_str(t),
                    " (cast q, k and v to torch.float16 or torch.bfloat16; float32 and float64 run on the CPU only)");
  } else {
    STD_TORCH_CHECK(q.is_cpu(), "fused_attention: q must be a CPU or CUDA tensor, got ", glue::device_str(q));
    STD_TORCH_CHECK(t == ScalarType::Float || t == ScalarType::Double || is_low_precision(t),
                    "fused_attention: q must be float32, float16, bfloat16 or float64, got ", glue::dtype_str(t));
  }
  for (int i = 1; i < 3; ++i)
    STD_TORCH_CHECK(ts[i]->scalar_type() == t, "fused_attention: ", names[i], " must have q's dtype (",
                    glue::dtype_str(t), "), got ", glue::dtype_str(ts[i]->scalar_type()));

  const QKVShape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  STD_TORCH_CHECK(k.size(0) == s.batch, "fused_attention: k must have q's batch size (dim 0) ", s.batch,
                  ", got k of shape ", glue::shape_str(k));
  STD_TORCH_CHECK(k.size(3) == s.head_dim, "fused_attention: k must have q's head_dim (last dim) ", s.head_dim,
                  ", got k of shape ", glue::shape_str(k));
  STD_TORCH_CHECK(glue::sizes_of(v) == glue::sizes_of(k), "fused_attention: v must have k's shape ",
                  glue::shape_str(k), ", got ", glue::shape_str(v));
  STD_TORCH_CHECK(s.head_dim >= 1 && s.head_dim <= kMaxHeadDim, "fused_attention: head_dim (q.size(3)) must be in [1, ",
                  kMaxHeadDim, "], got ", s.head_dim);
  // The CUDA kernels' one shape rule (csrc/attention/attention_launch.cu); the CPU takes any D.
  STD_TORCH_CHECK(!q.is_cuda() || s.head_dim % 8 == 0,
                  "fused_attention: head_dim (q.size(3)) must be a multiple of 8 on CUDA, got ", s.head_dim,
                  " (pad q, k and v with zeros to a multiple of 8 and slice the output)");
  STD_TORCH_CHECK(s.heads_kv >= 1 ? s.heads_q % s.heads_kv == 0 : s.heads_q == 0,
                  "fused_attention: the number of query heads (q.size(1) = ", s.heads_q,
                  ") must be a multiple of the number of key/value heads (k.size(1) = ", s.heads_kv, ")");
  for (int i = 0; i < 3; ++i)
    STD_TORCH_CHECK(s.head_dim == 1 || ts[i]->stride(3) == 1, "fused_attention: ", names[i],
                    " must have unit stride in its last (head_dim) dimension, got last-dim stride ",
                    ts[i]->stride(3), " (shape ", glue::shape_str(*ts[i]), "); any other strides are fine; call ",
                    names[i], ".contiguous() first");
  STD_TORCH_CHECK(window_left >= -1, "fused_attention: window_left must be >= -1 (-1: unbounded), got ", window_left);
  STD_TORCH_CHECK(window_right >= -1, "fused_attention: window_right must be >= -1 (-1: unbounded), got ", window_right);
  return s;
}

ScalarType lse_dtype(const Tensor& q) { return q.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

AttentionStrides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// An output shaped like `like` (B, H, S, D) in like's memory order: (B, S, H, D) memory when
// like is a (B, S, H, D) tensor viewed with .transpose(1, 2) (so out.transpose(1, 2) is
// contiguous again), contiguous otherwise. _empty_in_layout_of in attention.py is the same rule.
Tensor empty_in_layout_of(const Tensor& like, ScalarType dtype) {
  const int64_t B = like.size(0), H = like.size(1), S = like.size(2), D = like.size(3);
  if (H > 1 && S > 1 && like.stride(1) < like.stride(2))
    return torch::stable::transpose(glue::empty_like_shape(like, {B, S, H, D}, dtype), 1, 2);
  return glue::empty_like_shape(like, {B, H, S, D}, dtype);
}

AttentionFwdParams fwd_params(const QKVShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, double scale, int64_t window_left, int64_t window_right) {
  AttentionFwdParams p;
  p.batch = s.batch;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.seqlen_q = s.seqlen_q;
  p.seqlen_k = s.seqlen_k;
  p.head_dim = s.head_dim;
  p.q = q.data_ptr();
  p.q_s = strides_of(q);
  p.k = k.data_ptr();
  p.k_s = strides_of(k);
  p.v = v.data_ptr();
  p.v_s = strides_of(v);
  p.out = out.data_ptr();
  p.o_s = strides_of(out);
  p.dtype = glue::to_dtype(q.scalar_type());
  if (p.dtype == DType::kFloat64) p.lse_f64 = static_cast<double*>(lse.data_ptr());
  else p.lse = static_cast<float*>(lse.data_ptr());
  p.scale = static_cast<float>(scale);
  p.window_left = window_left;
  p.window_right = window_right;
  return p;
}

// A gradient or saved tensor the backward reads: unit stride along D (an expanded gradient,
// out.sum().backward(), has stride 0 everywhere) and, for the (B, Hq, Sq) statistics, contiguous.
Tensor unit_last_stride(const Tensor& t) {
  return t.size(3) == 1 || t.stride(3) == 1 ? t : torch::stable::contiguous(t);
}

#ifdef MMM_WITH_CUDA
// The CUDA kernels read rows with 16-byte vector loads: each row must start 16-byte aligned.
Tensor aligned_for_cuda(const Tensor& t) {
  const bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 &&
                  (t.size(0) == 1 || t.stride(0) % 8 == 0) && (t.size(1) == 1 || t.stride(1) % 8 == 0) &&
                  (t.size(2) == 1 || t.stride(2) % 8 == 0);
  return ok ? t : torch::stable::contiguous(t);
}

// A build may compile a subset of the kernel head dims (CMake MMM_ATTENTION_HEAD_DIMS). Mirrored
// by _check in attention.py (from mmm.build_info()["attention_head_dims"]).
void check_cuda_head_dim(const QKVShape& s) {
  STD_TORCH_CHECK(attention_compiled_head_dim(s.head_dim) != 0, "fused_attention: head_dim (q.size(3)) ",
                  s.head_dim, " has no CUDA kernel in this build of mmm, which compiled head dims ",
                  attention_compiled_head_dims(), " only (rebuild with MMM_ATTENTION_HEAD_DIMS including one >= ",
                  s.head_dim, ", or run on the CPU)");
}

#endif

// `deterministic` is the backward's (saved by the autograd kernel, which sees only the forward's
// arguments); the forward is deterministic either way.
std::tuple<Tensor, Tensor> fused_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                                   int64_t window_left, int64_t window_right, bool /*deterministic*/) {
  const QKVShape s = check_qkv(q, k, v, window_left, window_right);
#ifdef MMM_WITH_CUDA
  if (q.is_cuda()) check_cuda_head_dim(s);
#endif
  Tensor out = empty_in_layout_of(q, q.scalar_type());
  Tensor lse = glue::empty_like_shape(q, {s.batch, s.heads_q, s.seqlen_q}, lse_dtype(q));
  if (s.batch * s.heads_q * s.seqlen_q == 0) return {out, lse};
  if (s.seqlen_k == 0) {  // no key at all: every row is one without keys (here, for every device)
    torch::stable::zero_(out);
    torch::stable::fill_(lse, std::numeric_limits<double>::infinity());
    return {out, lse};
  }

  if (q.is_cuda()) {
#ifdef MMM_WITH_CUDA
    const Tensor qa = aligned_for_cuda(q), ka = aligned_for_cuda(k), va = aligned_for_cuda(v);
    AttentionFwdParams p = fwd_params(s, qa, ka, va, out, lse, scale, window_left, window_right);
    const int32_t device = q.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);
    const char* err = launch_attention_fwd(p, glue::current_cuda_stream(device));
    STD_TORCH_CHECK(err == nullptr, "fused_attention (CUDA forward): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, "fused_attention: no CUDA kernels in this build of mmm");
#endif
  } else {
    const AttentionFwdParams p = fwd_params(s, q, k, v, out, lse, scale, window_left, window_right);
    torch::stable::parallel_for(0, attention_fwd_cpu_tasks(p), 1,
                                [&](int64_t b, int64_t e) { attention_fwd_cpu(p, b, e); });
  }
  return {out, lse};
}

std::string sizes_str(const std::vector<int64_t>& sizes) {
  std::string r = "(";
  for (size_t i = 0; i < sizes.size(); ++i) r += (i ? ", " : "") + std::to_string(sizes[i]);
  return r + ")";
}

void check_like(const Tensor& t, const char* name, const Tensor& q, const std::vector<int64_t>& sizes, ScalarType dtype) {
  STD_TORCH_CHECK(glue::sizes_of(t) == sizes && t.scalar_type() == dtype && same_device(t, q),
                  "fused_attention_backward: ", name, " must have shape ", sizes_str(sizes), ", dtype ",
                  glue::dtype_str(dtype), " and q's device, got ", glue::shape_str(t), " ",
                  glue::dtype_str(t.scalar_type()), " on ", glue::device_str(t));
}

std::tuple<Tensor, Tensor, Tensor> fused_attention_backward(const Tensor& grad_out_in, const optional<Tensor>& grad_lse_in,
                                                            const Tensor& q, const Tensor& k, const Tensor& v,
                                                            const Tensor& out_in, const Tensor& lse_in, double scale,
                                                            int64_t window_left, int64_t window_right,
                                                            bool deterministic) {
  const QKVShape s = check_qkv(q, k, v, window_left, window_right);
#ifdef MMM_WITH_CUDA
  if (q.is_cuda()) check_cuda_head_dim(s);
#endif
  const std::vector<int64_t> q_sizes = glue::sizes_of(q), lse_sizes{s.batch, s.heads_q, s.seqlen_q};
  check_like(grad_out_in, "grad_out", q, q_sizes, q.scalar_type());
  check_like(out_in, "out", q, q_sizes, q.scalar_type());
  check_like(lse_in, "lse", q, lse_sizes, lse_dtype(q));
  if (grad_lse_in.has_value()) check_like(*grad_lse_in, "grad_lse", q, lse_sizes, lse_dtype(q));

  Tensor dq = empty_in_layout_of(q, q.scalar_type());
  Tensor dk = empty_in_layout_of(k, k.scalar_type());
  Tensor dv = empty_in_layout_of(v, v.scalar_type());
  if (s.batch * s.heads_q * s.seqlen_q * s.seqlen_k == 0) {  // nothing attends: zero gradients (every device)
    torch::stable::zero_(dq);
    torch::stable::zero_(dk);
    torch::stable::zero_(dv);
    return {dq, dk, dv};
  }

  const Tensor grad_out = unit_last_stride(grad_out_in);
  const Tensor out = unit_last_stride(out_in);
  const Tensor lse = torch::stable::contiguous(lse_in);
  optional<Tensor> grad_lse;
  if (grad_lse_in.has_value()) grad_lse = torch::stable::contiguous(*grad_lse_in);

  auto bwd_params = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& o_, const Tensor& do_) {
    AttentionBwdParams p;
    p.fwd = fwd_params(s, q_, k_, v_, o_, lse, scale, window_left, window_right);
    p.dout = do_.data_ptr();
    p.do_s = strides_of(do_);
    p.dq = dq.data_ptr();
    p.dq_s = strides_of(dq);
    p.dk = dk.data_ptr();
    p.dk_s = strides_of(dk);
    p.dv = dv.data_ptr();
    p.dv_s = strides_of(dv);
    p.dlse = grad_lse.has_value() ? grad_lse->data_ptr() : nullptr;
    p.deterministic = deterministic;
    return p;
  };

  if (q.is_cuda()) {
#ifdef MMM_WITH_CUDA
    const Tensor qa = aligned_for_cuda(q), ka = aligned_for_cuda(k), va = aligned_for_cuda(v);
    const Tensor oa = aligned_for_cuda(out), doa = aligned_for_cuda(grad_out);
    AttentionBwdParams p = bwd_params(qa, ka, va, oa, doa);
    const int32_t device = q.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);
    const size_t bytes = attention_bwd_cuda_workspace_bytes(p);
    Tensor ws = glue::empty_like_shape(q, {int64_t((bytes + 3) / 4)}, ScalarType::Float);
    p.workspace = bytes ? ws.data_ptr() : nullptr;
    const char* err = launch_attention_bwd(p, glue::current_cuda_stream(device));
    STD_TORCH_CHECK(err == nullptr, "fused_attention (CUDA backward): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, "fused_attention: no CUDA kernels in this build of mmm");
#endif
  } else {
    AttentionBwdParams p = bwd_params(q, k, v, out, grad_out);
    const AttentionBwdCpuPlan plan = attention_bwd_cpu_plan(p, int(torch::stable::get_num_threads()));
    Tensor ws = glue::empty_like_shape(q, {int64_t((plan.workspace_bytes + 7) / 8)}, ScalarType::Double);
    p.workspace = plan.workspace_bytes ? ws.data_ptr() : nullptr;
    for (int phase = 0; phase < 3; ++phase)
      if (plan.tasks[phase] > 0)
        torch::stable::parallel_for(0, plan.tasks[phase], 1,
                                    [&](int64_t b, int64_t e) { attention_bwd_cpu(p, plan, phase, b, e); });
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) {
  m.def(
      "fused_attention_forward(Tensor q, Tensor k, Tensor v, float scale, int window_left, int window_right, "
      "bool deterministic=True) -> (Tensor out, Tensor lse)");
  m.def(
      "fused_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, "
      "Tensor lse, float scale, int window_left, int window_right, bool deterministic=True) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) {
  m.impl("fused_attention_forward", TORCH_BOX(&mmm::fused_attention_forward));
  m.impl("fused_attention_backward", TORCH_BOX(&mmm::fused_attention_backward));
}

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) {
  m.impl("fused_attention_forward", TORCH_BOX(&mmm::fused_attention_forward));
  m.impl("fused_attention_backward", TORCH_BOX(&mmm::fused_attention_backward));
}
#endif
