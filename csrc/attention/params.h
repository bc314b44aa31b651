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
  DType dtype = DType::kFloat32;  // of q, k, v, out (accumulation in fp32; fp64 for fp64 on CPU)
  float scale = 1.f;
  int64_t window_left = -1, window_right = -1;  // causal: window_right = 0
};

struct AttentionBwdParams {
  AttentionFwdParams fwd;      // q, k, v, out, lse as saved by the forward (out and lse read-only)
  const void* dout = nullptr;  AttentionStrides do_s;
  void* dq = nullptr;          AttentionStrides dq_s;
  void* dk = nullptr;          AttentionStrides dk_s;
  void* dv = nullptr;          AttentionStrides dv_s;
  // fp32 scratch (size from *_workspace_bytes): rowsum(dO ∘ O) and, on CUDA, the dq accumulator.
  void* workspace = nullptr;
  bool deterministic = true;   // bitwise reproducible dq/dk/dv
};

}  // namespace mmm

namespace mmm {
// ---- CUDA (attention_launch.cu) -------------------------------------------------------------
// nullptr on success, else a static message. Requires fp16/bf16, head_dim % 8 == 0 (<= 256),
// 16-byte aligned rows (the glue copies anything else).
const char* launch_attention_fwd(const AttentionFwdParams& p, void* stream);
size_t attention_bwd_cuda_workspace_bytes(const AttentionBwdParams& p);  // fp32 rowsum(dO ∘ O)
// dq, dk, dv written in full (no atomics: always deterministic). With seqlen_k == 0 dk/dv are
// empty; a query row with no key gets dq = 0.
const char* launch_attention_bwd(const AttentionBwdParams& p, void* stream);
int attention_compiled_head_dim(int64_t head_dim);  // the kernel head dimension used, 0 if none
}  // namespace mmm
