// fused_attention: out = softmax(q·kᵀ·scale + mask) · v, FlashAttention-style (tiled, online
// softmax, P never materialised), with grouped-query attention and causal / sliding-window masks.
//
// Layout: q (B, Hq, Sq, D), k and v (B, Hkv, Sk, D), out like q: any strides with unit stride
// along D (so a (B, S, H, D) tensor viewed with .transpose(1, 2) is read in place). Query head
// h reads key/value head h / (Hq / Hkv).
//
// Mask (FlashAttention >= 2.1, bottom-right aligned when Sq != Sk): with shift = Sk - Sq, query
// row i may attend key j iff  j <= i + shift + window_right  and  j >= i + shift - window_left,
// where a window bound of -1 means unbounded; causal is window_right = 0. A row with no key to
// attend to (possible when Sq > Sk or with windows) outputs zeros and has lse = +inf, so that
// exp(s - lse) = 0 in the backward and its gradients are zero too.
//
// Plain structs shared by the CPU twin, the CUDA launcher and the C++ benchmark.
#pragma once
#include <cstddef>
#include "core/common.h"

namespace mmm {

struct AttentionStrides {
  int64_t batch = 0, head = 0, row = 0;  // elements; the D dimension has unit stride
};

struct AttentionFwdParams {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  const void* q = nullptr; AttentionStrides q_s;
  const void* k = nullptr; AttentionStrides k_s;
  const void* v = nullptr; AttentionStrides v_s;
  void* out = nullptr;     AttentionStrides o_s;
  float* lse = nullptr;    // (B, Hq, Sq) fp32, contiguous; natural log; +inf for rows with no key
  double* lse_f64 = nullptr;  // CPU, fp64 inputs only: the lse in fp64 here instead (lse unused)
  DType dtype = DType::kFloat32;  // of q, k, v, out (accumulation in fp32; fp64 for fp64 on CPU)
  float scale = 1.f;
  int64_t window_left = -1, window_right = -1;  // causal: window_right = 0
};

// The CUDA launchers clamp windows to this before launching, so that kernels may add window
// bounds to positions in 32 bits (lengths are below 2^22 there): |key - query - shift| < 2^23, so
// a window of 2^24 sees exactly the keys a wider one does.
inline constexpr int64_t kAttnWindowClamp = int64_t(1) << 24;

struct AttentionBwdParams {
  AttentionFwdParams fwd;      // q, k, v, out, lse as saved by the forward (out and lse read-only)
  const void* dout = nullptr;  AttentionStrides do_s;
  void* dq = nullptr;          AttentionStrides dq_s;
  void* dk = nullptr;          AttentionStrides dk_s;
  void* dv = nullptr;          AttentionStrides dv_s;
  // fp32 scratch (size from *_workspace_bytes; on CUDA 16-byte aligned): rowsum(dO ∘ O) and, on
  // CUDA, the dq accumulator.
  void* workspace = nullptr;
  bool deterministic = true;   // false: CUDA may add dq with atomics (the CPU always is)
  // Optional gradient of the lse output, (B, Hq, Sq) contiguous in lse's dtype (fp32; fp64 for
  // fp64 inputs on the CPU); nullptr means zero. Since d lse_i / d s_ij = P_ij it only shifts the
  // row term: dS = P ∘ (dP − (rowsum(dO ∘ O) − dlse)).
  const void* dlse = nullptr;
};

}  // namespace mmm

namespace mmm {
// ---- CPU twin (attention_cpu.cpp) -----------------------------------------------------------
// Any dtype (fp32, fp16, bf16; fp64 with lse_f64), any head_dim >= 1, any strides (unit stride
// along D). The caller brings the threads: it runs [begin, end) ranges of independent tasks.
// Forward: one task per (batch, query head, query tile).
int64_t attention_fwd_cpu_tasks(const AttentionFwdParams& p);
void attention_fwd_cpu(const AttentionFwdParams& p, int64_t task_begin, int64_t task_end);
// Backward: phases 0, 1, 2 run in this order (a barrier between them), each over plan.tasks[i]
// tasks. 0: rowsum(dO ∘ O) − dlse per query row; 1: dK, dV per (batch, kv head) — "fused",
// which also accumulates dQ in the workspace — or per (batch, kv head, key tile); 2 (when not
// fused): dQ per (batch, query head, query tile). Every output element is written by one task
// and summed in a fixed order, and both schedules do the same arithmetic: bitwise reproducible,
// whatever the thread count. `workspace` (plan.workspace_bytes, no alignment needed) is scratch.
struct AttentionBwdCpuPlan {
  bool fused = true;
  int64_t tasks[3] = {0, 0, 0};
  size_t workspace_bytes = 0;
};
AttentionBwdCpuPlan attention_bwd_cpu_plan(const AttentionBwdParams& p, int num_threads);
void attention_bwd_cpu(const AttentionBwdParams& p, const AttentionBwdCpuPlan& plan, int phase,
                       int64_t task_begin, int64_t task_end);

// ---- CUDA (attention_launch.cu) -------------------------------------------------------------
// nullptr on success, else a static message. Requires fp16/bf16, head_dim % 8 == 0 (<= 256),
// 16-byte aligned rows (the glue copies anything else).
const char* launch_attention_fwd(const AttentionFwdParams& p, void* stream);
// deterministic = false takes the atomic-dQ kernel where there is one (head dims 32 to 128, on
// a GPU with the opt-in shared memory for it: A100, H100, ...; the current device is asked), the
// deterministic kernels otherwise.
bool attention_bwd_uses_atomic_dq(const AttentionBwdParams& p);
// fp32 scratch: rowsum(dO ∘ O), and the dq accumulator when attention_bwd_uses_atomic_dq.
size_t attention_bwd_cuda_workspace_bytes(const AttentionBwdParams& p);
// dq, dk, dv written in full. Deterministic (bitwise reproducible) unless
// attention_bwd_uses_atomic_dq, which leaves dq's last bits to the atomics' order. With
// seqlen_k == 0 dk/dv are empty; a query row with no key gets dq = 0.
const char* launch_attention_bwd(const AttentionBwdParams& p, void* stream);
// The kernel head dimension head_dim runs on: the smallest compiled one >= head_dim, 0 if none
// (the build compiles MMM_ATTENTION_HEAD_DIMS, by default 32, 64, 96, 128, 192, 256).
int attention_compiled_head_dim(int64_t head_dim);
const char* attention_compiled_head_dims();  // "32, 64, ..." as compiled
}  // namespace mmm
