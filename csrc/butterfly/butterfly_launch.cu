// Entry points of butterfly_multiply on CUDA: the pass plan, tile sizes and launches.
//
// One pass when a row of n elements fits one CTA's shared memory (forward: n * 4 B real, 8 B
// complex; backward: three such buffers), else every block of log_n factors is split into passes
// of nearly equal bit ranges through an fp32 workspace. The backward's multi-pass path first runs
// the forward passes storing each pass's input (the per-pass checkpoints), then the backward
// passes last to first.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "butterfly/butterfly_kernel.cuh"
#include "butterfly/params.h"

namespace mmm {
namespace {

constexpr int kMaxRows = 8;                  // units per tile
constexpr int64_t kTileTarget = 48 * 1024;   // smem per CTA we aim for when rows are short
constexpr int64_t kMaxPartialBytes = int64_t(1) << 28;

struct PassRange {
  int f0, f1, b0, k;  // factors [f0, f1) on element bits [b0, b0 + k)
  int c;              // spectator bits (butterfly_kernel.cuh)
};

int64_t smem_optin(int device) {
  int optin = 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return optin;
}

int64_t round32(int64_t e) { return (e + 31) / 32 * 32; }

// Largest k with `bufs` buffers of 2^k values (of `esz` bytes) in one CTA.
int max_bits(int64_t optin, int bufs, int64_t esz) {
  int k = 1;
  while (k < 30 && bufs * round32(int64_t(1) << (k + 1)) * esz <= optin) ++k;
  return k;
}

// kmax: the most local bits a tile unit may have; esz: the workspace's value size (the
// spectator bits aim at 32-byte runs).
std::vector<PassRange> plan(const ButterflyParams& p, int kmax, int64_t esz) {
  const int log_n = int(p.log_n), L = int(p.factors());
  if (log_n <= kmax) return {{0, L, 0, log_n, 0}};
  const int cmax = esz == 8 ? 2 : 3;
  std::vector<PassRange> out;
  const int nq = (log_n + kmax - 1) / kmax;
  for (int block = 0; block < int(p.nblocks); ++block) {
    const bool inc = p.increasing_stride != ((block & 1) != 0);
    int idx = 0;
    for (int q = 0; q < nq; ++q) {
      const int k = log_n / nq + (q < log_n % nq ? 1 : 0);
      // Increasing: bits [idx, idx + k) in that order; decreasing: the top bits first.
      const int b0 = inc ? idx : log_n - idx - k;
      out.push_back({block * log_n + idx, block * log_n + idx + k, b0, k, std::min({b0, cmax, kmax - k})});
      idx += k;
    }
  }
  return out;
}

struct Geometry {
  int kmax_fwd, kmax_bwd;
  int64_t esz;     // bytes of one fp32 / complex64 value
  int64_t budget;  // smem per CTA a tile of several rows may take
};

Geometry geometry(const ButterflyParams& p, int device) {
  const int64_t optin = smem_optin(device);
  const int64_t esz = is_complex(p.x_dtype) ? 8 : 4;
  return {max_bits(optin, 1, esz), max_bits(optin, 3, esz), esz, std::min(kTileTarget, optin)};
}

BfPass base_pass(const ButterflyParams& p, const PassRange& r, int bufs, const Geometry& g, int rows_override = 0) {
  const int64_t esz = g.esz;
  BfPass P{};
  P.n = p.n;
  P.batch = p.batch;
  P.nstacks = p.nstacks;
  P.log_n = int(p.log_n);
  P.nfactors = int(p.factors());
  P.increasing = p.increasing_stride;
  P.f0 = r.f0;
  P.f1 = r.f1;
  P.b0 = r.b0;
  P.c = r.c;
  P.k = r.k + r.c;
  const int64_t M = int64_t(1) << P.k;
  P.nseg = p.n / M;
  const int64_t per_row = M * esz * bufs;
  P.R = rows_override > 0 ? rows_override
                          : int(std::clamp<int64_t>(g.budget / per_row, 1, std::min<int64_t>(kMaxRows, p.batch)));
  // Buffers are rounded up to 32 values: keep that within the budget too.
  while (rows_override == 0 && P.R > 1 && bufs * round32(int64_t(P.R) * M) * esz > g.budget) --P.R;
  P.ntb = (p.batch + P.R - 1) / P.R;
  P.tw = p.twiddle;
  P.tw_t = p.tw_dtype;
  return P;
}

size_t smem_bytes(const BfPass& P, int bufs, int64_t esz) {
  return size_t(bufs * round32(int64_t(P.R) << P.k) * esz);
}

int threads_for(const BfPass& P) { return int(std::clamp<int64_t>((int64_t(1) << P.k) / 8, 32, 256)); }

template <bool kCx>
cudaError_t launch_fwd(const BfPass& P, int64_t esz, cudaStream_t stream) {
  const size_t smem = smem_bytes(P, 1, esz);
  auto kernel = butterfly_fwd_kernel<kCx>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t tiles = P.nstacks * P.nseg * P.ntb;
  kernel<<<unsigned(std::min<int64_t>(tiles, 0x7fffffff)), threads_for(P), smem, stream>>>(P);
  return cudaGetLastError();
}

template <bool kCx>
cudaError_t launch_bwd(const BfPass& P, int64_t esz, cudaStream_t stream) {
  const size_t smem = smem_bytes(P, 3, esz);
  auto kernel = butterfly_bwd_kernel<kCx, kCx ? 2 : 3>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t lanes = P.nstacks * P.nseg * P.slots;
  kernel<<<unsigned(std::min<int64_t>(lanes, 0x7fffffff)), threads_for(P), smem, stream>>>(P);
  return cudaGetLastError();
}

// Partial slots per (stack, segment): enough lanes to fill the GPU, at most one per batch tile
// (every slot of every pass is then written), and a bounded workspace. Depends on the shapes
// and the device only, so dtwiddle is deterministic run to run.
int64_t slots_for(const ButterflyParams& p, int64_t lanes_per_slot, int64_t ntb, int64_t esz, int device) {
  int sms = 1;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want = std::max<int64_t>(1, (4 * int64_t(sms) + lanes_per_slot - 1) / lanes_per_slot);
  const int64_t per_slot = p.nstacks * p.factors() * p.n * 2 * esz;
  const int64_t cap = std::max<int64_t>(1, kMaxPartialBytes / per_slot);
  return std::max<int64_t>(1, std::min({want, ntb, cap}));
}

struct BwdLayout {
  std::vector<PassRange> passes;
  int rows;       // units per tile, all passes
  int64_t slots;  // partial slots, all passes
  size_t partial_bytes, ckpt_bytes, grad_bytes;
};

BwdLayout bwd_layout(const ButterflyParams& p, int device) {
  const Geometry g = geometry(p, device);
  BwdLayout b;
  b.passes = plan(p, g.kmax_bwd, g.esz);
  // One tile height for all passes (the smallest any pass allows), so every pass has the same
  // batch tiles and the same slots.
  b.rows = kMaxRows;
  int64_t min_nseg = p.n;
  for (const PassRange& r : b.passes) {
    b.rows = std::min(b.rows, base_pass(p, r, 3, g).R);
    min_nseg = std::min<int64_t>(min_nseg, p.n >> (r.k + r.c));
  }
  const int64_t ntb = (p.batch + b.rows - 1) / b.rows;
  b.slots = slots_for(p, p.nstacks * min_nseg, ntb, g.esz, device);
  b.partial_bytes = size_t(p.nstacks * b.slots * p.factors() * p.n * 2 * g.esz);
  const size_t row_bytes = size_t(p.rows() * p.n * g.esz);
  const size_t q = b.passes.size();
  b.ckpt_bytes = q > 1 ? (q - 1) * row_bytes : 0;
  b.grad_bytes = q > 1 ? row_bytes : 0;
  return b;
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

template <bool kCx>
cudaError_t run_forward(const ButterflyParams& p, void* workspace, cudaStream_t stream, int device) {
  const Geometry g = geometry(p, device);
  const std::vector<PassRange> passes = plan(p, g.kmax_fwd, g.esz);
  const DType ws_t = kCx ? DType::kComplex64 : DType::kFloat32;
  for (size_t i = 0; i < passes.size(); ++i) {
    BfPass P = base_pass(p, passes[i], 1, g);
    const bool first = i == 0, last = i + 1 == passes.size();
    P.in = first ? p.x : workspace;
    P.in_rs = first ? p.x_row_stride : p.n;
    P.in_len = first ? p.n_read() : p.n;
    P.in_t = first ? p.x_dtype : ws_t;
    P.out = last ? p.y : workspace;  // passes in place: a tile reads all its elements before writing
    P.out_rs = p.n;
    P.out_len = p.n;
    P.out_t = last ? p.x_dtype : ws_t;
    const cudaError_t err = launch_fwd<kCx>(P, g.esz, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <bool kCx>
cudaError_t run_backward(const ButterflyParams& p, void* workspace, cudaStream_t stream, int device) {
  const Geometry g = geometry(p, device);
  const BwdLayout lay = bwd_layout(p, device);
  const DType ws_t = kCx ? DType::kComplex64 : DType::kFloat32;
  char* base = static_cast<char*>(workspace);
  void* partial = base;
  char* ckpt = base + align256(lay.partial_bytes);
  void* grad = ckpt + align256(lay.ckpt_bytes);
  const size_t row_bytes = size_t(p.rows() * p.n * g.esz);
  const size_t Q = lay.passes.size();
  auto ck = [&](size_t q) -> void* { return ckpt + (q - 1) * row_bytes; };  // the input of pass q >= 1
  // Checkpoints: the forward passes 0 .. Q-2, each writing the next pass's input.
  for (size_t q = 0; q + 1 < Q; ++q) {
    BfPass P = base_pass(p, lay.passes[q], 1, g);
    P.in = q == 0 ? p.x : ck(q);
    P.in_rs = q == 0 ? p.x_row_stride : p.n;
    P.in_len = q == 0 ? p.n_read() : p.n;
    P.in_t = q == 0 ? p.x_dtype : ws_t;
    P.out = ck(q + 1);
    P.out_rs = p.n;
    P.out_len = p.n;
    P.out_t = ws_t;
    const cudaError_t err = launch_fwd<kCx>(P, g.esz, stream);
    if (err != cudaSuccess) return err;
  }
  for (size_t qi = Q; qi-- > 0;) {
    BfPass P = base_pass(p, lay.passes[qi], 3, g, lay.rows);
    P.in = qi == 0 ? p.x : ck(qi);
    P.in_rs = qi == 0 ? p.x_row_stride : p.n;
    P.in_len = qi == 0 ? p.n_read() : p.n;
    P.in_t = qi == 0 ? p.x_dtype : ws_t;
    const bool top = qi + 1 == Q;
    P.dy = top ? p.dy : grad;
    P.dy_rs = top ? p.dy_row_stride : p.n;
    P.dy_t = top ? p.x_dtype : ws_t;
    P.out = qi == 0 ? p.dx : grad;  // in place on grad: a tile reads its D before writing it
    P.out_rs = qi == 0 ? p.n_in : p.n;
    P.out_len = qi == 0 ? p.n_read() : p.n;
    P.out_t = qi == 0 ? p.x_dtype : ws_t;
    P.partial = partial;
    P.slots = lay.slots;
    const cudaError_t err = launch_bwd<kCx>(P, g.esz, stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t per_stack = p.factors() * p.n * 2;  // (L, n/2, 4) values
  const int64_t total = p.nstacks * per_stack;
  const unsigned grid = unsigned(std::min<int64_t>((total + 255) / 256, 65535));
  butterfly_reduce_kernel<kCx><<<grid, 256, 0, stream>>>(static_cast<const bf_val<kCx>*>(partial), p.nstacks, lay.slots,
                                                         per_stack, p.dtwiddle, p.tw_dtype);
  return cudaGetLastError();
}

}  // namespace

size_t butterfly_cuda_workspace_bytes(const ButterflyParams& p, bool backward, int device) {
  if (p.rows() == 0) return 0;
  if (!backward) {
    const Geometry g = geometry(p, device);
    return plan(p, g.kmax_fwd, g.esz).size() > 1 ? size_t(p.rows() * p.n * g.esz) : 0;
  }
  const BwdLayout lay = bwd_layout(p, device);
  return align256(lay.partial_bytes) + align256(lay.ckpt_bytes) + lay.grad_bytes;
}

const char* launch_butterfly_forward(const ButterflyParams& p, void* workspace, void* stream_ptr) {
  if (p.rows() == 0) return nullptr;
  int device = 0;
  cudaGetDevice(&device);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = cudaErrorInvalidValue;
  if (p.x_dtype == DType::kComplex64) err = run_forward<true>(p, workspace, stream, device);
  else if (p.x_dtype == DType::kFloat32 || p.x_dtype == DType::kFloat16 || p.x_dtype == DType::kBFloat16)
    err = run_forward<false>(p, workspace, stream, device);
  else return "butterfly_multiply: no CUDA kernel for this dtype";
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* launch_butterfly_backward(const ButterflyParams& p, void* workspace, void* stream_ptr) {
  if (p.rows() == 0) return nullptr;
  int device = 0;
  cudaGetDevice(&device);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = cudaErrorInvalidValue;
  if (p.x_dtype == DType::kComplex64) err = run_backward<true>(p, workspace, stream, device);
  else if (p.x_dtype == DType::kFloat32 || p.x_dtype == DType::kFloat16 || p.x_dtype == DType::kBFloat16)
    err = run_backward<false>(p, workspace, stream, device);
  else return "butterfly_multiply_backward: no CUDA kernel for this dtype";
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
