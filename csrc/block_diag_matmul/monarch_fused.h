// The fused Monarch forward: y = monarch(x, w1, w2) in one pass, the intermediate kept on chip.
//
// Semantics (HazyResearch/fly's blockdiag_butterfly_multiply; params.h has the two-GEMM form):
// x (T, k*p), w1 (k, q, p), w2 (l, s, r), l*r == k*q, y (T, l*s);
//     u[t, b*q + i1]    = sum_c x[t, b*p + c] * w1[b, i1, c]          (stage 1, rounded to x's dtype)
//     y[t, t2*l + j]    = sum_i u[t, i*l + j] * w2[j, t2, i]          (stage 2)
//
// The index map. Intermediate column c is stage-1 block b = c / q's row i1 = c % q, and stage-2
// block j = c % l's input i = c / l. Stage-2 blocks are processed in chunks of J consecutive
// blocks j = j0 + jj (J | l, J % 16 == 0); a chunk's stage 1 is a list of "units", each one
// small GEMM x[:, b*p : (b+1)*p] (T, p) x w1[b, rows]^T (p, n1), whose output e is stored,
// permuted, where stage 2 reads it as one contiguous K run:
//   l | q ("by rows", n_sub = q / l, r = k * n_sub): c = b*q + a*l + j (a < n_sub) is input
//     i = b*n_sub + a of block j. Units u = b < k; n1 = n_sub*J rows
//         e = a*J + jj  ->  w1 row a*l + j0 + jj,  stored at z[t][jj*r + b*n_sub + a];
//     x is read once per chunk (once when J == l).
//   q | l otherwise ("by blocks", m = l / q, r = k / m, J % q == 0): c = (i*m + jb)*q + e with
//     j = jb*q + e, so a chunk takes whole w1 blocks: units u < r*J/q, i = u / (J/q),
//     jb = u % (J/q), block b = i*m + j0/q + jb, all n1 = q rows e, stored at
//     z[t][(jb*q + e)*r + i]; every w1 block (and x slice) is used by exactly one chunk.
// Stage 2 of block jj is then a plain GEMM over z[:, jj*r : (jj+1)*r], whose output t2 goes to
//     y[t, t2*l + j0 + jj]                                             (monarch_y_col)
// The permutations are thus only which w1 rows a unit loads and where its results are stored:
// no data moves for them.
//
// The CUDA kernel (monarch_fused_kernel.cuh) and its CPU twin (monarch_fused_cpu_impl.h) both use
// these functions; the CPU twin is monarch_matmul's CPU forward for every shape the plan
// accepts, so the CPU tests check the index map the GPU uses.
//
// On sm_90 a square Monarch matrix (k = l = p = q = r = s = B, B = 32 or 64: MonarchLinear(1024)
// and MonarchLinear(4096) by default) takes another kernel (monarch_cluster_kernel.cuh): a
// cluster of B / 8 CTAs holds all the weights on chip, 8 blocks of w1 and 8 of w2 per CTA (one of
// each per warp, in registers), and streams tokens past them; stage 1's outputs go straight to
// the CTA that owns their stage-2 block (distributed shared memory). No CTA re-reads weights, so every byte from HBM is
// an activation: the streaming kernel above reads all the weights from L2 per 16-32 tokens.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "core/common.h"

namespace mmm {

struct MonarchFused {
  int64_t tokens = 0;
  int64_t k = 0, q = 0, p = 0;  // w1 (k, q, p)
  int64_t l = 0, s = 0, r = 0;  // w2 (l, s, r)
  const void* x = nullptr; int64_t x_rs = 0;  // (tokens, k*p), unit column stride
  const void* w1 = nullptr;                    // contiguous
  const void* w2 = nullptr;                    // contiguous
  void* y = nullptr; int64_t y_rs = 0;         // (tokens, l*s), unit column stride
  DType dtype = DType::kBFloat16;
};

// ---- the index map ------------------------------------------------------------------------
// Templated on the index type: the CUDA kernel uses int (64-bit division is slow there).
template <typename I>
struct MonarchIndex {
  I k, q, l, r, J;
  bool by_rows;  // l | q; else q | l
  MMM_HD MonarchIndex(I k_, I q_, I l_, I r_, I J_) : k(k_), q(q_), l(l_), r(r_), J(J_), by_rows(q_ % l_ == 0) {}
  MMM_HD I units() const { return by_rows ? k : r * (J / q); }         // stage-1 GEMMs per chunk
  MMM_HD I n1() const { return by_rows ? (q / l) * J : q; }             // their output columns
  MMM_HD I block(I j0, I u) const {                                      // unit u's w1 block
    return by_rows ? u : (u / (J / q)) * (l / q) + j0 / q + u % (J / q);
  }
  MMM_HD I w1_row(I j0, I e) const { return by_rows ? (e / J) * l + j0 + e % J : e; }  // unit's output e
  MMM_HD I z_block(I u, I e) const { return by_rows ? e % J : (u % (J / q)) * q + e; }  // its stage-2 block jj
  MMM_HD I z_col(I u, I e) const {                                       // where e is stored in z
    return z_block(u, e) * r + (by_rows ? u * (q / l) + e / J : u / (J / q));
  }
};
// Output t2 of stage-2 block j0 + jj: its column in y.
template <typename I>
MMM_HD I monarch_y_col(I t2, I jj, I j0, I l) { return t2 * l + j0 + jj; }

// ---- the plan: the one place that decides fused vs two GEMMs --------------------------------
constexpr int kMonarchThreads = 128;   // 4 warps
constexpr int kMonarchStages = 3;      // cp.async pipeline depth: loads run two steps ahead
constexpr int kMonarchKSlice = 64;     // reduction elements per pipeline stage
constexpr int kMonarchKPitch = 72;     // smem row pitch of a staged slice: 144 bytes, ldmatrix conflict-free
constexpr int kMonarchYGroup = 8;      // stage-2 blocks whose outputs leave together: 16-byte stores
constexpr int kMonarchMaxBlock = 256;  // p, r, s and n1: accumulators stay in registers
// The CPU twin plans as the GPU with the most shared memory (sm_90: 227 KB per block with
// opt-in), so CPU runs take the chunking an H100 takes; that fits a core's L2 too, and fewer,
// wider chunks keep its micro-kernel's tiles full (4096 features: 1.3x faster than planning for
// 99 KB). Tests force the smaller GPUs' chunks (MMM_MONARCH_CHUNK, MMM_MONARCH_BT).
constexpr int64_t kMonarchCpuTwinSmem = 227 * 1024;
// CUDA fuses only while the bytes a token costs the fused kernel in L2 reads stay within this
// many times what the two-GEMM path moves through HBM for it (see plan_monarch_fused).
constexpr int64_t kMonarchL2Ratio = 3;

// Overrides of the plan's choices, for tests and for measuring on a GPU without rebuilding (the
// torch glue reads them from MMM_MONARCH_* environment variables). 0 / false: the plan decides.
struct MonarchFusedKnobs {
  bool no_cluster = false;  // CUDA: never the cluster kernel (to compare the streaming one)
  int64_t chunk = 0;    // force J (tests use it to force chunking)
  int64_t bt = 0;       // force the tokens per CTA (16 or 32)
  int64_t units = 0;    // cap the GEMMs per step, stage-1 units and stage-2 blocks (1: one a step)
  bool always = false;  // CUDA: fuse whenever the shape fits, past the L2 rule
};

struct MonarchFusedPlan {
  bool fused = false;
  int cluster = 0;     // CUDA: CTAs per cluster of the resident-weight kernel; 0: the streaming kernel
  int bt = 0;          // tokens per CTA (CUDA) / per task (CPU)
  int chunk = 0;       // J: stage-2 blocks per chunk
  int units = 1;       // CUDA: stage-1 units per pipeline step (1, 2 or 4; see below)
  int blocks = 1;      // CUDA: stage-2 blocks per pipeline step (1, 2 or 4)
  int64_t smem = 0;    // dynamic shared memory bytes per CTA (CUDA)
  const char* why = "";  // when not fused
};

// Shared-memory bytes of one CTA: kMonarchStages buffers of U x slices (bt, 64) and a weight
// slice (max(U*n1, V*s), 64), the chunk's intermediate z (J*r, bt: stored transposed, swizzled,
// no padding) and the output staging (bt, 8*s + 8); the +8 pads make every row pitch 16 mod 128
// bytes (conflict-free ldmatrix).
inline int64_t monarch_fused_smem(const MonarchFused& f, int64_t bt, int64_t J, int64_t U, int64_t V,
                                  int64_t elem = 2) {
  const int64_t n1 = MonarchIndex<int64_t>(f.k, f.q, f.l, f.r, J).n1();
  const int64_t nw = U * n1 > V * f.s ? U * n1 : V * f.s;
  return elem * (kMonarchStages * (U * bt + nw) * kMonarchKPitch + J * f.r * bt + bt * (kMonarchYGroup * f.s + 8));
}

// The cluster kernel (sm_90): each CTA owns kMonarchClusterWarps stage-1 and stage-2 blocks, one
// per warp (their weights in its registers), and takes kMonarchClusterTokens tokens a step. Its
// shared memory: kMonarchClusterXStages x buffers (pitch 8B + 8: conflict-free ldmatrix) and
// kMonarchClusterZBuffers exchange buffers (one cluster barrier a step needs three: see the
// kernel).
constexpr int kMonarchClusterWarps = 8;
constexpr int kMonarchClusterTokens = 16;
constexpr int kMonarchClusterXStages = 4;
constexpr int kMonarchClusterZBuffers = 3;
inline int64_t monarch_cluster_smem(int64_t B, int64_t elem = 2) {
  const int64_t x = kMonarchClusterTokens * (kMonarchClusterWarps * B + 8), z = kMonarchClusterWarps * B * kMonarchClusterTokens;
  return elem * (kMonarchClusterXStages * x + kMonarchClusterZBuffers * z);
}

inline bool monarch_aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Shapes the fused path takes: l | q with l % 16 == 0, or q | l with q % 16 == 0; p, r, s
// multiples of 16 and <= 256; the n1 of a chunk <= 256. `cuda`
// adds the CUDA kernel's conditions: fp16/bf16 and 16-byte aligned rows for cp.async (fp32 stays
// on the two tensor-core-free GEMMs: its FMA kernel would gain little from fusion). Among the
// (bt, J) that fit `smem_limit`, the one moving the fewest bytes per token wins:
//     x row * reads  [by rows: x re-read per chunk, l / J; by blocks: 1]
//     + all weights / bt  [weights re-read per CTA]
// (ties: bigger bt, bigger J); `knobs` may force J and bt.
// The L2 rule (CUDA): every CTA streams all the weights from L2 for only 16-32 tokens, so for
// big blocks those bytes outgrow what fusing saves, the two-GEMM path's HBM traffic of
// x + 2u + y per token (its GEMM tiles re-read the weights per 128 tokens or more). Fusing is
// kept while the bytes above are at most kMonarchL2Ratio times that: an H100's L2 serves
// roughly 2-2.5x its HBM bandwidth (an H200's less), so 3 gives up only shapes the fused
// kernel cannot win (8192 features as 64 blocks of 128: 288 KB a token from L2 against 64 KB
// from HBM) and keeps 4096 (48 KB against 32 KB) and 8192 as 128 blocks of 64 (144 KB against
// 64 KB). A guess until measured (bench/cpp times both paths; knobs.always fuses anyway).
// Then, on CUDA, GEMMs per step: a stage-1 unit of n1 < 64 columns has fewer 16-wide tiles than
// the CTA has warps, so U = 2 or 4 units share a step (4 / U warps each) where U * n1 <= 64,
// U <= the units of a chunk and the U x slices still fit: fewer pipeline steps (each a barrier
// and a dependent MMA chain) for the same shared-memory traffic per MMA. Stage 2 likewise groups
// V = 2 or 4 blocks where V * s <= 64. knobs.units caps both.
// Not modelled yet (to measure): occupancy (CTAs per SM) and per-step latency.
// `clusters` (CUDA, sm_90+): a square Monarch of blocks of 32 or 64 whose cluster kernel fits
// `smem_limit` takes it (B = 64: 113 KB a CTA), unless knobs force another path. No L2 rule
// there: its weights are read once per CTA.
inline MonarchFusedPlan plan_monarch_fused(const MonarchFused& f, int64_t smem_limit, bool cuda,
                                           const MonarchFusedKnobs& knobs = {}, bool clusters = false) {
  MonarchFusedPlan plan;
  const auto no = [&plan](const char* why) { plan.why = why; return plan; };
  const auto fits = [](int64_t v) { return v >= 16 && v % 16 == 0 && v <= kMonarchMaxBlock; };
  const bool by_rows = f.q % f.l == 0;
  if (!by_rows && f.l % f.q != 0) return no("neither of w1's block_out q and w2's block count l divides the other");
  if (by_rows ? f.l % 16 != 0 : f.q % 16 != 0)
    return no("the smaller of w1's block_out q and w2's block count l is not a multiple of 16");
  if (!fits(f.p) || !fits(f.r) || !fits(f.s))
    return no("block sizes p, r, s are not multiples of 16 up to 256");
  if (cuda) {
    if (f.dtype != DType::kFloat16 && f.dtype != DType::kBFloat16)
      return no("the fused CUDA kernel is fp16/bf16 only");
    if (!monarch_aligned16(f.x) || f.x_rs % 8 != 0 || !monarch_aligned16(f.w1) || !monarch_aligned16(f.w2) ||
        !monarch_aligned16(f.y) || f.y_rs % 8 != 0)
      return no("x, w1, w2 or y rows are not 16-byte aligned");
  }
  const int64_t B = f.p;
  const bool square = f.k == B && f.q == B && f.l == B && f.r == B && f.s == B && (B == 32 || B == 64);
  if (cuda && clusters && square && !knobs.no_cluster && knobs.chunk <= 0 && knobs.bt <= 0 && knobs.units <= 0 &&
      monarch_cluster_smem(B) <= smem_limit) {
    plan.fused = true, plan.cluster = int(B / kMonarchClusterWarps), plan.bt = kMonarchClusterTokens;
    plan.chunk = int(f.l), plan.smem = monarch_cluster_smem(B);
    return plan;
  }
  const int64_t elem = 2;
  const int64_t x_row = f.k * f.p * elem, w_all = (f.k * f.q * f.p + f.l * f.s * f.r) * elem;
  int64_t best = -1;
  for (int bt : {32, 16}) {
    if (knobs.bt > 0 && bt != knobs.bt) continue;
    for (int64_t J = f.l; J >= 16; J -= 16) {
      if (f.l % J != 0 || (!by_rows && J % f.q != 0)) continue;
      if (MonarchIndex<int64_t>(f.k, f.q, f.l, f.r, J).n1() > kMonarchMaxBlock) continue;
      if (knobs.chunk > 0 && J != knobs.chunk) continue;
      const int64_t smem = monarch_fused_smem(f, bt, J, 1, 1);
      if (smem > smem_limit) continue;
      const int64_t cost = x_row * (by_rows ? f.l / J : 1) + w_all / bt;
      if (best < 0 || cost < best) {
        best = cost;
        plan.fused = true, plan.bt = bt, plan.chunk = int(J), plan.smem = smem;
      }
    }
  }
  if (!plan.fused) {
    plan.why = knobs.chunk > 0 || knobs.bt > 0 ? "the forced chunk / tokens per CTA do not fit"
                                               : "no chunk fits in shared memory";
    return plan;
  }
  const int64_t two_gemm_bytes = elem * (f.k * f.p + 2 * f.k * f.q + f.l * f.s);
  if (cuda && !knobs.always && best > kMonarchL2Ratio * two_gemm_bytes) {
    plan.fused = false;
    plan.why = "the weights each CTA streams from L2 outweigh the activation traffic fusing saves";
    return plan;
  }
  if (!cuda) return plan;
  const MonarchIndex<int64_t> ix(f.k, f.q, f.l, f.r, plan.chunk);
  const int64_t cols = 16 * (kMonarchThreads / 32);  // one 16-wide tile per warp
  const auto allowed = [&](int G, int64_t n) { return G * n <= cols && (knobs.units <= 0 || G <= knobs.units); };
  for (int U : {4, 2, 1})
    for (int V : {4, 2, 1}) {
      const int64_t smem = monarch_fused_smem(f, plan.bt, plan.chunk, U, V);
      if ((U == 1 || (allowed(U, ix.n1()) && U <= ix.units())) && (V == 1 || allowed(V, f.s)) && smem <= smem_limit) {
        plan.units = U, plan.blocks = V, plan.smem = smem;
        return plan;
      }
    }
  return plan;
}

// ---- CPU twin (monarch_fused_cpu.cpp): one task = plan.bt tokens ----------------------------
inline int64_t monarch_fused_cpu_tasks(const MonarchFused& f, const MonarchFusedPlan& plan) {
  return ceil_div(f.tokens, plan.bt);
}
void monarch_fused_cpu(const MonarchFused& f, const MonarchFusedPlan& plan, int64_t task_begin, int64_t task_end);

// ---- CUDA (monarch_fused_launch.cu) ----------------------------------------------------------
// The opt-in shared memory per block of `device` (what plan_monarch_fused may use); 0 on error.
int64_t monarch_fused_smem_limit(int device);
// Whether `device` launches thread-block clusters (compute capability 9.0 or newer, and a build
// with sm_90 code): plan_monarch_fused's `clusters`.
bool monarch_fused_clusters(int device);
// nullptr on success, else a static message. `plan` must come from plan_monarch_fused(cuda=true).
const char* launch_monarch_fused(const MonarchFused& f, const MonarchFusedPlan& plan, void* stream);

}  // namespace mmm
