// torch glue for block_diag_matmul and monarch_matmul: schemas, checks, allocation, and the
// sequence of block GEMMs each op runs (csrc/block_diag_matmul/params.h describes them).
#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>

#include "block_diag_matmul/monarch_fused.h"
#include "block_diag_matmul/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;

void check_x(const Tensor& x, const char* op) {
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension, got a 0-dim tensor");
  const ScalarType t = x.scalar_type();
  const bool low = t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
  if (x.is_cuda()) {
    STD_TORCH_CHECK(low, op, ": x must be float32, float16 or bfloat16 on CUDA (float64 only on the CPU), got ",
                    glue::dtype_str(t));
  } else {
    STD_TORCH_CHECK(x.is_cpu() && (low || t == ScalarType::Double), op,
                    ": x must be a CPU or CUDA float32, float16, bfloat16 or float64 tensor, got ",
                    glue::dtype_str(t), " on ", glue::device_str(x));
  }
}

// A block-diagonal weight (nblocks, out, in) on x's device and of x's dtype; returned contiguous.
Tensor check_weight(const Tensor& w, const char* name, const Tensor& x, const char* op) {
  STD_TORCH_CHECK(w.dim() == 3, op, ": ", name, " must be 3-D (nblocks, block_out, block_in), got shape ",
                  glue::shape_str(w));
  STD_TORCH_CHECK(w.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype (",
                  glue::dtype_str(x.scalar_type()), "), got ", glue::dtype_str(w.scalar_type()));
  STD_TORCH_CHECK(w.is_cuda() == x.is_cuda() && w.get_device_index() == x.get_device_index(), op, ": ", name,
                  " is on ", glue::device_str(w), " but x is on ", glue::device_str(x));
  return w.is_contiguous() ? w : torch::stable::contiguous(w);
}

bool env_is(const char* name, char value) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] == value;
}

void run(BlockGemm g, const Tensor& like) {
  if (g.batch == 0 || g.m == 0 || g.n == 0) return;
  if (like.is_cuda()) {
#ifdef MMM_WITH_CUDA
    // A switch for comparing the tensor-core kernel with the plain fp32-FMA one on a GPU.
    g.simt_only = env_is("MMM_DISABLE_TENSOR_CORES", '1');
    torch::stable::accelerator::DeviceGuard guard(like.get_device_index());
    // Split-K where the output alone cannot fill the GPU (dweight); MMM_BLOCK_GEMM_SPLITS=n forces
    // n splits on the tensor-core kernel (tests compare split counts).
    const char* splits_env = std::getenv("MMM_BLOCK_GEMM_SPLITS");
    const bool tc = !g.simt_only && g.dtype != DType::kFloat32;
    g.splits = splits_env != nullptr && tc ? std::max(1, std::min(1024, std::atoi(splits_env))) : block_gemm_cuda_splits(g);
    std::optional<Tensor> workspace;  // freed on return: the caching allocator orders its reuse on this stream
    if (g.splits > 1) {
      workspace.emplace(glue::empty_like_shape(like, {g.splits * g.batch * g.m * g.n}, ScalarType::Float));
      g.workspace = static_cast<float*>(workspace->data_ptr());
    }
    const char* err = launch_block_gemm(g, glue::current_cuda_stream(like.get_device_index()));
    STD_TORCH_CHECK(err == nullptr, "mmm block GEMM (CUDA): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, "mmm was built without CUDA kernels");
#endif
  } else {
    torch::stable::parallel_for(0, block_gemm_cpu_tasks(g), 1,
                                [&](int64_t b, int64_t e) { block_gemm_cpu(g, b, e); });
  }
}

std::vector<int64_t> with_last(const Tensor& x, int64_t last) {
  auto s = glue::sizes_of(x);
  s.back() = last;
  return s;
}

// ---- block_diag_matmul ----------------------------------------------------------------------
struct BlockDiagShape {
  int64_t tokens, nb, n, k;
};

BlockDiagShape block_diag_shape(const Tensor& x, const Tensor& w, const char* op) {
  const int64_t nb = w.size(0), n = w.size(1), k = w.size(2), cols = x.size(x.dim() - 1);
  STD_TORCH_CHECK(nb >= 1 && k >= 1 && n >= 1, op, ": w must have nblocks, block_out, block_in >= 1, got ",
                  glue::shape_str(w));
  STD_TORCH_CHECK(nb * k == cols, op, ": w of shape ", glue::shape_str(w), " needs x's last dimension = nblocks * block_in = ",
                  nb * k, ", got x of shape ", glue::shape_str(x));
  return {glue::rows_of(x, cols), nb, n, k};
}

Tensor block_diag_matmul(const Tensor& x_in, const Tensor& w_in) {
  const char* op = "block_diag_matmul";
  check_x(x_in, op);
  const Tensor w = check_weight(w_in, "w", x_in, op);
  const auto s = block_diag_shape(x_in, w, op);
  Tensor y = glue::empty_like_shape(x_in, with_last(x_in, s.nb * s.n), x_in.scalar_type());
  if (s.tokens == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, s.nb * s.k);
  const DType dt = glue::to_dtype(x.scalar_type());
  run(block_diag_fwd(x.data_ptr(), x_rs, w.data_ptr(), y.data_ptr(), s.nb * s.n, s.tokens, s.nb, s.n, s.k, dt), x);
  return y;
}

std::tuple<Tensor, Tensor> block_diag_matmul_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in) {
  const char* op = "block_diag_matmul_backward";
  check_x(x_in, op);
  const Tensor w = check_weight(w_in, "w", x_in, op);
  const auto s = block_diag_shape(x_in, w, op);
  STD_TORCH_CHECK(glue::sizes_of(dy_in) == with_last(x_in, s.nb * s.n) && dy_in.scalar_type() == x_in.scalar_type(),
                  op, ": grad_y must have y's shape and dtype");
  Tensor dx = glue::empty_like_shape(x_in, glue::sizes_of(x_in), x_in.scalar_type());
  Tensor dw = glue::empty_like_shape(x_in, glue::sizes_of(w), x_in.scalar_type());
  auto [x, x_rs] = glue::as_rows(x_in, s.nb * s.k);
  auto [dy, dy_rs] = glue::as_rows(dy_in, s.nb * s.n);
  const DType dt = glue::to_dtype(x.scalar_type());
  run(block_diag_dx(dy.data_ptr(), dy_rs, w.data_ptr(), dx.data_ptr(), s.nb * s.k, s.tokens, s.nb, s.n, s.k, dt), x);
  run(block_diag_dw(dy.data_ptr(), dy_rs, x.data_ptr(), x_rs, dw.data_ptr(), s.tokens, s.nb, s.n, s.k, dt), x);
  return {dx, dw};
}

// ---- monarch_matmul -------------------------------------------------------------------------
struct MonarchShape {
  int64_t tokens, k, q, p, l, s, r;
};

MonarchShape monarch_shape(const Tensor& x, const Tensor& w1, const Tensor& w2, const char* op) {
  const int64_t k = w1.size(0), q = w1.size(1), p = w1.size(2);
  const int64_t l = w2.size(0), s = w2.size(1), r = w2.size(2), cols = x.size(x.dim() - 1);
  STD_TORCH_CHECK(k >= 1 && q >= 1 && p >= 1, op, ": w1 must have all dimensions >= 1, got ", glue::shape_str(w1));
  STD_TORCH_CHECK(l >= 1 && s >= 1 && r >= 1, op, ": w2 must have all dimensions >= 1, got ", glue::shape_str(w2));
  STD_TORCH_CHECK(k * p == cols, op, ": w1 of shape ", glue::shape_str(w1), " (k, q, p) needs x's last dimension = k * p = ",
                  k * p, ", got x of shape ", glue::shape_str(x));
  STD_TORCH_CHECK(l * r == k * q, op, ": w2 of shape ", glue::shape_str(w2), " (l, s, r) needs l * r = k * q = ", k * q,
                  " (w1's output size), got ", l * r);
  return {glue::rows_of(x, cols), k, q, p, l, s, r};
}

MonarchFused monarch_fused_args(const MonarchShape& m, const Tensor& x, int64_t x_rs, const Tensor& w1,
                                const Tensor& w2, void* y) {
  MonarchFused f;
  f.tokens = m.tokens, f.k = m.k, f.q = m.q, f.p = m.p, f.l = m.l, f.s = m.s, f.r = m.r;
  f.x = x.data_ptr(), f.x_rs = x_rs, f.w1 = w1.data_ptr(), f.w2 = w2.data_ptr();
  f.y = y, f.y_rs = m.l * m.s;
  f.dtype = glue::to_dtype(x.scalar_type());
  return f;
}

// THE place that picks monarch_matmul's forward: the fused kernel (on the CPU, its twin) when
// plan_monarch_fused accepts the shape, dtype, alignment and this device's shared memory, else
// two block GEMMs with the intermediate in global memory. MMM_MONARCH_FUSED=0 forces the two
// GEMMs (benchmarks compare both) and =1 fuses wherever the shape fits (past the plan's L2
// rule). Tuning knobs: MMM_MONARCH_CHUNK=J forces the chunk size (tests use it to exercise
// several chunks), MMM_MONARCH_BT=16|32 the tokens per CTA, MMM_MONARCH_UNITS=1|2|4 caps the small
// GEMMs per pipeline step (stage-1 units, stage-2 blocks); any of them, or MMM_MONARCH_CLUSTER=0,
// keeps sm_90 on the streaming kernel instead of the cluster one. MMM_DISABLE_TENSOR_CORES=1
// also keeps CUDA off the fused kernels.
MonarchFusedPlan monarch_forward_plan(const MonarchFused& f, const Tensor& x) {
  MonarchFusedPlan none;  // not fused
  if (env_is("MMM_MONARCH_FUSED", '0')) return none;
  const auto env_int = [](const char* name) -> int64_t {
    const char* v = std::getenv(name);
    return v != nullptr ? std::atoll(v) : 0;
  };
  MonarchFusedKnobs knobs;
  knobs.chunk = env_int("MMM_MONARCH_CHUNK");
  knobs.bt = env_int("MMM_MONARCH_BT");
  knobs.units = env_int("MMM_MONARCH_UNITS");
  knobs.always = env_is("MMM_MONARCH_FUSED", '1');
  knobs.no_cluster = env_is("MMM_MONARCH_CLUSTER", '0');
  if (!x.is_cuda()) return plan_monarch_fused(f, kMonarchCpuTwinSmem, /*cuda=*/false, knobs);
#ifdef MMM_WITH_CUDA
  if (env_is("MMM_DISABLE_TENSOR_CORES", '1')) return none;
  const int device = x.get_device_index();
  return plan_monarch_fused(f, monarch_fused_smem_limit(device), /*cuda=*/true, knobs, monarch_fused_clusters(device));
#else
  return none;
#endif
}

void run_fused(const MonarchFused& f, const MonarchFusedPlan& plan, const Tensor& like) {
  if (like.is_cuda()) {
#ifdef MMM_WITH_CUDA
    torch::stable::accelerator::DeviceGuard guard(like.get_device_index());
    const char* err = launch_monarch_fused(f, plan, glue::current_cuda_stream(like.get_device_index()));
    STD_TORCH_CHECK(err == nullptr, "mmm fused Monarch (CUDA): ", err ? err : "");
#endif
  } else {
    torch::stable::parallel_for(0, monarch_fused_cpu_tasks(f, plan), 1,
                                [&](int64_t b, int64_t e) { monarch_fused_cpu(f, plan, b, e); });
  }
}

Tensor monarch_matmul(const Tensor& x_in, const Tensor& w1_in, const Tensor& w2_in) {
  const char* op = "monarch_matmul";
  check_x(x_in, op);
  const Tensor w1 = check_weight(w1_in, "w1", x_in, op), w2 = check_weight(w2_in, "w2", x_in, op);
  const auto m = monarch_shape(x_in, w1, w2, op);
  Tensor y = glue::empty_like_shape(x_in, with_last(x_in, m.l * m.s), x_in.scalar_type());
  if (m.tokens == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, m.k * m.p);
  const MonarchFused f = monarch_fused_args(m, x, x_rs, w1, w2, y.data_ptr());
  const MonarchFusedPlan plan = monarch_forward_plan(f, x);
  if (plan.fused) {
    run_fused(f, plan, x);
    return y;
  }
  const DType dt = f.dtype;
  // The intermediate stays in x's dtype, as in the reference (two bmms) and the fused kernel.
  Tensor u = glue::empty_like_shape(x, {m.tokens, m.k * m.q}, x.scalar_type());
  run(block_diag_fwd(x.data_ptr(), x_rs, w1.data_ptr(), u.data_ptr(), m.k * m.q, m.tokens, m.k, m.q, m.p, dt), x);
  run(monarch_stage2_fwd(u.data_ptr(), m.k * m.q, w2.data_ptr(), y.data_ptr(), m.l * m.s, m.tokens, m.l, m.s, m.r, dt), x);
  return y;
}

// Which forward monarch_matmul takes for these inputs: [fused, tokens per CTA, chunk, smem bytes,
// stage-1 units per step, stage-2 blocks per step, CTAs per cluster (0: not the cluster kernel)]
// (tests and benchmarks report it; the op itself never needs it).
std::vector<int64_t> monarch_forward_plan_op(const Tensor& x_in, const Tensor& w1_in, const Tensor& w2_in) {
  const char* op = "monarch_forward_plan";
  check_x(x_in, op);
  const Tensor w1 = check_weight(w1_in, "w1", x_in, op), w2 = check_weight(w2_in, "w2", x_in, op);
  const auto m = monarch_shape(x_in, w1, w2, op);
  auto [x, x_rs] = glue::as_rows(x_in, m.k * m.p);
  // y is allocated fresh by the op, so 16-byte aligned: stand in an aligned null pointer.
  const MonarchFusedPlan plan = monarch_forward_plan(monarch_fused_args(m, x, x_rs, w1, w2, nullptr), x);
  return {plan.fused ? 1 : 0, plan.bt, plan.chunk, plan.smem, plan.units, plan.blocks, plan.cluster};
}

std::tuple<Tensor, Tensor, Tensor> monarch_matmul_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w1_in,
                                                           const Tensor& w2_in) {
  const char* op = "monarch_matmul_backward";
  check_x(x_in, op);
  const Tensor w1 = check_weight(w1_in, "w1", x_in, op), w2 = check_weight(w2_in, "w2", x_in, op);
  const auto m = monarch_shape(x_in, w1, w2, op);
  STD_TORCH_CHECK(glue::sizes_of(dy_in) == with_last(x_in, m.l * m.s) && dy_in.scalar_type() == x_in.scalar_type(),
                  op, ": grad_y must have y's shape and dtype");
  Tensor dx = glue::empty_like_shape(x_in, glue::sizes_of(x_in), x_in.scalar_type());
  Tensor dw1 = glue::empty_like_shape(x_in, glue::sizes_of(w1), x_in.scalar_type());
  Tensor dw2 = glue::empty_like_shape(x_in, glue::sizes_of(w2), x_in.scalar_type());
  auto [x, x_rs] = glue::as_rows(x_in, m.k * m.p);
  auto [dy, dy_rs] = glue::as_rows(dy_in, m.l * m.s);
  const DType dt = glue::to_dtype(x.scalar_type());
  const int64_t kq = m.k * m.q;
  // Recompute the stage-1 output instead of saving it: one GEMM against tokens x k*q of memory.
  Tensor u = glue::empty_like_shape(x, {m.tokens, kq}, x.scalar_type());
  Tensor du = glue::empty_like_shape(x, {m.tokens, kq}, x.scalar_type());
  run(block_diag_fwd(x.data_ptr(), x_rs, w1.data_ptr(), u.data_ptr(), kq, m.tokens, m.k, m.q, m.p, dt), x);
  run(monarch_stage2_dw(dy.data_ptr(), dy_rs, u.data_ptr(), kq, dw2.data_ptr(), m.tokens, m.l, m.s, m.r, dt), x);
  run(monarch_stage2_dx(dy.data_ptr(), dy_rs, w2.data_ptr(), du.data_ptr(), kq, m.tokens, m.l, m.s, m.r, dt), x);
  run(block_diag_dx(du.data_ptr(), kq, w1.data_ptr(), dx.data_ptr(), m.k * m.p, m.tokens, m.k, m.q, m.p, dt), x);
  run(block_diag_dw(du.data_ptr(), kq, x.data_ptr(), x_rs, dw1.data_ptr(), m.tokens, m.k, m.q, m.p, dt), x);
  return {dx, dw1, dw2};
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) {
  m.def("block_diag_matmul(Tensor x, Tensor w) -> Tensor");
  m.def("block_diag_matmul_backward(Tensor grad_y, Tensor x, Tensor w) -> (Tensor grad_x, Tensor grad_w)");
  m.def("monarch_matmul(Tensor x, Tensor w1, Tensor w2) -> Tensor");
  m.def("monarch_matmul_backward(Tensor grad_y, Tensor x, Tensor w1, Tensor w2) "
        "-> (Tensor grad_x, Tensor grad_w1, Tensor grad_w2)");
  m.def("_monarch_forward_plan(Tensor x, Tensor w1, Tensor w2) -> int[]");
}

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) {
  m.impl("block_diag_matmul", TORCH_BOX(&mmm::block_diag_matmul));
  m.impl("block_diag_matmul_backward", TORCH_BOX(&mmm::block_diag_matmul_backward));
  m.impl("monarch_matmul", TORCH_BOX(&mmm::monarch_matmul));
  m.impl("monarch_matmul_backward", TORCH_BOX(&mmm::monarch_matmul_backward));
  m.impl("_monarch_forward_plan", TORCH_BOX(&mmm::monarch_forward_plan_op));
}

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) {
  m.impl("block_diag_matmul", TORCH_BOX(&mmm::block_diag_matmul));
  m.impl("block_diag_matmul_backward", TORCH_BOX(&mmm::block_diag_matmul_backward));
  m.impl("monarch_matmul", TORCH_BOX(&mmm::monarch_matmul));
  m.impl("monarch_matmul_backward", TORCH_BOX(&mmm::monarch_matmul_backward));
  m.impl("_monarch_forward_plan", TORCH_BOX(&mmm::monarch_forward_plan_op));
}
#endif
