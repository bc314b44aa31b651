// fused_add_norm CUDA kernels.
//
//   fwd         h = dropout(x) + residual; stats; out = act(norm(h) * w + b). One pass over HBM.
//   bwd         dx, dresidual from (dout, h, stats); weight/bias partial sums, one row per CTA.
//   bwd_dwdb    (rows that do not fit in registers) weight/bias partial sums, column-parallel.
//   reduce_dwdb the partials summed in a fixed order -> dweight, dbias (deterministic).
//
// A row is owned by kWarpsPerRow warps: 1 for short rows (4 rows per CTA, warp shuffles only),
// 4 or 16 for longer rows (one row per CTA, a shared-memory step joins the warps). Each thread
// owns the 128-bit chunks c = lane_in_row + k * kRowThreads of the row, so every warp-wide load
// is coalesced. With kChunks > 0 the row lives in registers between passes ("cached": HBM is
// read once); kChunks == 0 is the looped variant for rows too long for registers, which re-reads
// its own row (an L2 hit) instead.
#pragma once
#include "core/cuda_utils.cuh"
#include "core/philox.h"
#include "fused_add_norm/activation.h"
#include "fused_add_norm/params.h"

namespace mmm {

template <typename T_, typename TH_, typename TW_, int kWarpsPerRow_, int kChunks_>
struct FusedAddNormTraits {
  using T = T_;    // x, out, dout, dx
  using TH = TH_;  // residual, residual_out (h), dresidual: T or float
  using TW = TW_;  // weight, bias: T or float
  static_assert(std::is_same_v<TH, T> || std::is_same_v<TH, float>, "TH is T or fp32");
  static_assert(std::is_same_v<TW, T> || std::is_same_v<TW, float>, "TW is T or fp32");
  static constexpr int kVec = 16 / sizeof(T);  // elements per chunk: one 128-bit load of x
  static constexpr int kWarpsPerRow = kWarpsPerRow_;
  static constexpr int kRowThreads = 32 * kWarpsPerRow;
  static constexpr int kRowsPerCta = kWarpsPerRow == 1 ? 4 : 1;
  static constexpr int kThreads = kRowThreads * kRowsPerCta;
  static constexpr int kChunks = kChunks_;  // chunks per thread held in registers; 0 = looped
  static constexpr bool kCached = kChunks > 0;
  static_assert(kRowsPerCta == 1 || kWarpsPerRow == 1, "multi-warp rows own the whole CTA");
};

// h for one chunk of one row: dropout(x) + residual, fp32. Elements past the row end are 0.
template <class K>
__device__ __forceinline__ void compute_h(float (&h)[K::kVec], const FusedAddNormFwdParams& p,
                                          int64_t row, int64_t c0, bool vec, float keep_scale,
                                          uint32_t threshold) {
  using T = typename K::T;
  using TH = typename K::TH;
  load_chunk<K::kVec>(h, static_cast<const T*>(p.x) + row * p.x_row_stride, c0, p.cols, vec);
  if (p.dropout_p > 0.0) {
    DropoutMask mask{p.seed, threshold};
    const uint64_t idx0 = uint64_t(row) * uint64_t(p.cols) + uint64_t(c0);
#pragma unroll
    for (int i = 0; i < K::kVec; ++i) h[i] = mask.keep(idx0 + i) ? h[i] * keep_scale : 0.f;
  }
  if (p.residual) {
    float r[K::kVec];
    load_chunk<K::kVec>(r, static_cast<const TH*>(p.residual) + row * p.res_row_stride, c0,
                        p.cols, vec);
#pragma unroll
    for (int i = 0; i < K::kVec; ++i) h[i] += r[i];
  }
  // Normalise the h that is stored (residual_out), which backward reads back: statistics of the
  // unrounded sum would not match it, and for a near-constant row rstd amplifies the difference.
  if constexpr (!std::is_same_v<TH, float>) {
#pragma unroll
    for (int i = 0; i < K::kVec; ++i) h[i] = to_f(from_f<TH>(h[i]));
  }
}

// y = act(xhat * w + b) for one chunk, written to out.
template <class K>
__device__ __forceinline__ void write_out(const FusedAddNormFwdParams& p, int64_t row, int64_t c0,
                                          bool vec, const float (&h)[K::kVec], float mean,
                                          float rstd) {
  using TW = typename K::TW;
  float y[K::kVec], w[K::kVec], b[K::kVec];
  if (p.weight) load_chunk<K::kVec>(w, static_cast<const TW*>(p.weight), c0, p.cols, vec);
  if (p.bias) load_chunk<K::kVec>(b, static_cast<const TW*>(p.bias), c0, p.cols, vec);
#pragma unroll
  for (int i = 0; i < K::kVec; ++i) {
    float v = (h[i] - mean) * rstd;
    if (p.weight) v *= w[i];
    if (p.bias) v += b[i];
    y[i] = activation_fwd(p.act, v);
  }
  store_chunk<K::kVec>(static_cast<typename K::T*>(p.out) + row * p.out_row_stride, y, c0, p.cols,
                       vec);
}

template <class K>
__global__ void __launch_bounds__(K::kThreads)
    fused_add_norm_fwd_kernel(const FusedAddNormFwdParams p, const bool vec) {
  constexpr int kVec = K::kVec;
  __shared__ float red[K::kWarpsPerRow];
  const int lane_in_row = threadIdx.x % K::kRowThreads;
  const int64_t n = p.cols;
  const float keep_scale = p.dropout_p > 0.0 ? float(1.0 / (1.0 - p.dropout_p)) : 1.f;
  const uint32_t threshold = dropout_threshold(p.dropout_p);
  const float inv_n = 1.f / float(n);

  // Rows step by the whole grid; with one row per CTA every thread of the CTA takes the same
  // trip count, as row_sum's barriers require.
  for (int64_t row = int64_t(blockIdx.x) * K::kRowsPerCta + threadIdx.x / K::kRowThreads;
       row < p.rows; row += int64_t(gridDim.x) * K::kRowsPerCta) {
    auto chunk_col = [&](int k) { return (int64_t(lane_in_row) + int64_t(k) * K::kRowThreads) * kVec; };
    float mean = 0.f, rstd;
    if constexpr (K::kCached) {
      float h[K::kChunks][kVec];  // (kChunks, kVec): this thread's slice of the row
      float s = 0.f;
      // Every chunk's loads before any h_out store: a store right behind the loads it needs
      // stalls the warp until they return (in-order issue), and the compiler cannot move later
      // loads above a store that may alias them, so each chunk's loads waited for the last's.
#pragma unroll
      for (int k = 0; k < K::kChunks; ++k) {
        const int64_t c0 = chunk_col(k);
        if (c0 < n) {
          compute_h<K>(h[k], p, row, c0, vec, keep_scale, threshold);
        } else {
#pragma unroll
          for (int i = 0; i < kVec; ++i) h[k][i] = 0.f;
        }
      }
#pragma unroll
      for (int k = 0; k < K::kChunks; ++k) {
        const int64_t c0 = chunk_col(k);
        if (c0 < n) {
          if (p.h_out)
            store_chunk<kVec>(static_cast<typename K::TH*>(p.h_out) + row * p.h_row_stride, h[k],
                              c0, n, vec);
#pragma unroll
          for (int i = 0; i < kVec; ++i) s += p.rms ? h[k][i] * h[k][i] : h[k][i];
        }
      }
      s = row_sum<K::kWarpsPerRow>(s, red);
      float var;
      if (p.rms) {
        var = s * inv_n;
      } else {
        // Second pass from registers: exact two-pass variance at no memory cost.
        mean = s * inv_n;
        float sq = 0.f;
#pragma unroll
        for (int k = 0; k < K::kChunks; ++k) {
          const int64_t c0 = chunk_col(k);
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            const float d = c0 + i < n ? h[k][i] - mean : 0.f;
            sq += d * d;
          }
        }
        var = row_sum<K::kWarpsPerRow>(sq, red) * inv_n;
      }
      rstd = rsqrtf(var + float(p.eps));
#pragma unroll
      for (int k = 0; k < K::kChunks; ++k) {
        const int64_t c0 = chunk_col(k);
        if (c0 < n) write_out<K>(p, row, c0, vec, h[k], mean, rstd);
      }
    } else {
      // Looped: sums shifted by the row's first h value (Chan et al.'s shifted-data variance:
      // cancellation-free while the shift is within a few std of the mean, which any sample
      // of the row is), then a second sweep that recomputes h from an L2-resident row.
      float first[kVec];
      compute_h<K>(first, p, row, 0, false, keep_scale, threshold);
      const float shift = p.rms ? 0.f : first[0];
      float s1 = 0.f, s2 = 0.f;
      for (int64_t c0 = int64_t(lane_in_row) * kVec; c0 < n; c0 += int64_t(K::kRowThreads) * kVec) {
        float h[kVec];
        compute_h<K>(h, p, row, c0, vec, keep_scale, threshold);
        if (p.h_out)
          store_chunk<kVec>(static_cast<typename K::TH*>(p.h_out) + row * p.h_row_stride, h, c0,
                            n, vec);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float d = c0 + i < n ? h[i] - shift : 0.f;
          s1 += d;
          s2 += d * d;
        }
      }
      s1 = row_sum<K::kWarpsPerRow>(s1, red) * inv_n;
      s2 = row_sum<K::kWarpsPerRow>(s2, red) * inv_n;
      mean = p.rms ? 0.f : shift + s1;
      const float var = p.rms ? s2 : fmaxf(s2 - s1 * s1, 0.f);
      rstd = rsqrtf(var + float(p.eps));
      for (int64_t c0 = int64_t(lane_in_row) * kVec; c0 < n; c0 += int64_t(K::kRowThreads) * kVec) {
        float h[kVec];
        compute_h<K>(h, p, row, c0, vec, keep_scale, threshold);
        write_out<K>(p, row, c0, vec, h, mean, rstd);
      }
    }
    if (lane_in_row == 0) {
      if (!p.rms) static_cast<float*>(p.mean)[row] = mean;
      static_cast<float*>(p.rstd)[row] = rstd;
    }
  }
}

// Per chunk of the backward: xhat and dy = dout * act'(xhat * w + b); returns w for dxhat = dy*w.
template <class K>
__device__ __forceinline__ void bwd_chunk(float (&xhat)[K::kVec], float (&dy)[K::kVec],
                                          float (&w)[K::kVec], const FusedAddNormBwdParams& p,
                                          int64_t row, int64_t c0, bool vec, float mean,
                                          float rstd) {
  using TW = typename K::TW;
  load_chunk<K::kVec>(xhat, static_cast<const typename K::TH*>(p.h) + row * p.h_row_stride, c0,
                      p.cols, vec);
  load_chunk<K::kVec>(dy, static_cast<const typename K::T*>(p.dout) + row * p.dout_row_stride, c0,
                      p.cols, vec);
  if (p.weight) {
    load_chunk<K::kVec>(w, static_cast<const TW*>(p.weight), c0, p.cols, vec);
  } else {
#pragma unroll
    for (int i = 0; i < K::kVec; ++i) w[i] = 1.f;
  }
  float b[K::kVec];
  const bool need_b = p.bias && p.act != Activation::kNone;
  if (need_b) load_chunk<K::kVec>(b, static_cast<const TW*>(p.bias), c0, p.cols, vec);
#pragma unroll
  for (int i = 0; i < K::kVec; ++i) {
    // Past the row end xhat and dy must be exactly 0: the row sums below include them.
    xhat[i] = c0 + i < p.cols ? (xhat[i] - mean) * rstd : 0.f;
    if (p.act != Activation::kNone) dy[i] *= activation_grad(p.act, xhat[i] * w[i] + (need_b ? b[i] : 0.f));
  }
}

// dh = rstd * (dxhat - c2 - xhat * c1) (+ grad of residual_out); dresidual = dh; dx = dropout'(dh).
template <class K>
__device__ __forceinline__ void bwd_write(const FusedAddNormBwdParams& p, int64_t row, int64_t c0,
                                          bool vec, const float (&xhat)[K::kVec],
                                          const float (&dxhat)[K::kVec], float rstd, float c1,
                                          float c2, float keep_scale, uint32_t threshold) {
  float dh[K::kVec];
#pragma unroll
  for (int i = 0; i < K::kVec; ++i) dh[i] = rstd * (dxhat[i] - c2 - xhat[i] * c1);
  if (p.dh_out) {
    float g[K::kVec];
    load_chunk<K::kVec>(g, static_cast<const typename K::TH*>(p.dh_out) + row * p.dh_out_row_stride,
                        c0, p.cols, vec);
#pragma unroll
    for (int i = 0; i < K::kVec; ++i) dh[i] += g[i];
  }
  if (p.dresidual)
    store_chunk<K::kVec>(static_cast<typename K::TH*>(p.dresidual) + row * p.dres_row_stride, dh,
                         c0, p.cols, vec);
  if (p.dropout_p > 0.0) {
    DropoutMask mask{p.seed, threshold};
    const uint64_t idx0 = uint64_t(row) * uint64_t(p.cols) + uint64_t(c0);
#pragma unroll
    for (int i = 0; i < K::kVec; ++i) dh[i] = mask.keep(idx0 + i) ? dh[i] * keep_scale : 0.f;
  }
  store_chunk<K::kVec>(static_cast<typename K::T*>(p.dx) + row * p.dx_row_stride, dh, c0, p.cols,
                       vec);
}

// Cached variant: also accumulates dweight/dbias for this thread's columns over all rows the
// CTA visits, then writes them as one partial row per CTA: workspace[cta][2][cols] (fp32).
template <class K>
__global__ void __launch_bounds__(K::kThreads)
    fused_add_norm_bwd_kernel(const FusedAddNormBwdParams p, const bool vec) {
  constexpr int kVec = K::kVec;
  __shared__ float red[K::kWarpsPerRow];
  const int lane_in_row = threadIdx.x % K::kRowThreads;
  const int64_t n = p.cols;
  const float keep_scale = p.dropout_p > 0.0 ? float(1.0 / (1.0 - p.dropout_p)) : 1.f;
  const uint32_t threshold = dropout_threshold(p.dropout_p);
  const float inv_n = 1.f / float(n);
  const int64_t group = int64_t(blockIdx.x) * K::kRowsPerCta + threadIdx.x / K::kRowThreads;
  constexpr int kAcc = K::kCached ? K::kChunks : 1;
  float dw[kAcc][kVec] = {}, db[kAcc][kVec] = {};

  for (int64_t row = group; row < p.rows; row += int64_t(gridDim.x) * K::kRowsPerCta) {
    const float mean = p.rms ? 0.f : static_cast<const float*>(p.mean)[row];
    const float rstd = static_cast<const float*>(p.rstd)[row];
    if constexpr (K::kCached) {
      float xhat[K::kChunks][kVec], dxhat[K::kChunks][kVec];
      float s1 = 0.f, s2 = 0.f;
#pragma unroll
      for (int k = 0; k < K::kChunks; ++k) {
        const int64_t c0 = (int64_t(lane_in_row) + int64_t(k) * K::kRowThreads) * kVec;
        if (c0 < n) {
          float dy[kVec], w[kVec];
          bwd_chunk<K>(xhat[k], dy, w, p, row, c0, vec, mean, rstd);
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            dw[k][i] += dy[i] * xhat[k][i];
            db[k][i] += dy[i];
            dxhat[k][i] = dy[i] * w[i];
            s1 += dxhat[k][i] * xhat[k][i];
            s2 += dxhat[k][i];
          }
        }
      }
      const float c1 = row_sum<K::kWarpsPerRow>(s1, red) * inv_n;
      const float c2 = p.rms ? 0.f : row_sum<K::kWarpsPerRow>(s2, red) * inv_n;
#pragma unroll
      for (int k = 0; k < K::kChunks; ++k) {
        const int64_t c0 = (int64_t(lane_in_row) + int64_t(k) * K::kRowThreads) * kVec;
        if (c0 < n) bwd_write<K>(p, row, c0, vec, xhat[k], dxhat[k], rstd, c1, c2, keep_scale, threshold);
      }
    } else {
      // Looped: two sweeps over the row; dweight/dbias come from fused_add_norm_bwd_dwdb_kernel.
      float s1 = 0.f, s2 = 0.f;
      for (int64_t c0 = int64_t(lane_in_row) * kVec; c0 < n; c0 += int64_t(K::kRowThreads) * kVec) {
        float xhat[kVec], dy[kVec], w[kVec];
        bwd_chunk<K>(xhat, dy, w, p, row, c0, vec, mean, rstd);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          s1 += dy[i] * w[i] * xhat[i];
          s2 += dy[i] * w[i];
        }
      }
      const float c1 = row_sum<K::kWarpsPerRow>(s1, red) * inv_n;
      const float c2 = p.rms ? 0.f : row_sum<K::kWarpsPerRow>(s2, red) * inv_n;
      for (int64_t c0 = int64_t(lane_in_row) * kVec; c0 < n; c0 += int64_t(K::kRowThreads) * kVec) {
        float xhat[kVec], dy[kVec], w[kVec], dxhat[kVec];
        bwd_chunk<K>(xhat, dy, w, p, row, c0, vec, mean, rstd);
#pragma unroll
        for (int i = 0; i < kVec; ++i) dxhat[i] = dy[i] * w[i];
        bwd_write<K>(p, row, c0, vec, xhat, dxhat, rstd, c1, c2, keep_scale, threshold);
      }
    }
  }

  if constexpr (K::kCached) {
    if (p.workspace && (p.dweight || p.dbias)) {
      if constexpr (K::kRowsPerCta > 1) {
        // The CTA's row warps own the same columns: fold warps 1.. into warp 0 through shared
        // memory, in warp order (deterministic), so the CTA writes one partial row, not
        // kRowsPerCta: for short rows the workspace traffic would otherwise rival the op's.
        __shared__ float fold[K::kRowsPerCta - 1][2][kAcc][kVec][32];  // lane last: no conflicts
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        if (warp > 0)
#pragma unroll
          for (int k = 0; k < kAcc; ++k)
#pragma unroll
            for (int i = 0; i < kVec; ++i) {
              fold[warp - 1][0][k][i][lane] = dw[k][i];
              fold[warp - 1][1][k][i][lane] = db[k][i];
            }
        __syncthreads();
        if (warp == 0)
          for (int w = 0; w < K::kRowsPerCta - 1; ++w)
#pragma unroll
            for (int k = 0; k < kAcc; ++k)
#pragma unroll
              for (int i = 0; i < kVec; ++i) {
                dw[k][i] += fold[w][0][k][i][lane];
                db[k][i] += fold[w][1][k][i][lane];
              }
      }
      // Every CTA writes its partial row, zeros included, so the reduction reads no garbage.
      if (threadIdx.x < K::kRowThreads) {
        float* ws_w = static_cast<float*>(p.workspace) + int64_t(blockIdx.x) * 2 * n;
        float* ws_b = ws_w + n;
#pragma unroll
        for (int k = 0; k < K::kChunks; ++k) {
          const int64_t c0 = (int64_t(lane_in_row) + int64_t(k) * K::kRowThreads) * kVec;
          if (c0 < n) {
            store_chunk<kVec>(ws_w, dw[k], c0, n, n % 4 == 0);
            store_chunk<kVec>(ws_b, db[k], c0, n, n % 4 == 0);
          }
        }
      }
    }
  }
}

// Column-parallel partial sums for rows too long for the cached kernel: CTA (x, y) sums columns
// [x*256, x*256+256) over the y-th slice of rows into workspace[y][2][cols].
template <class K>
__global__ void __launch_bounds__(256) fused_add_norm_bwd_dwdb_kernel(const FusedAddNormBwdParams p) {
  using T = typename K::T;
  using TW = typename K::TW;
  const int64_t col = int64_t(blockIdx.x) * 256 + threadIdx.x;
  if (col >= p.cols) return;
  const int64_t slices = gridDim.y;
  const int64_t r0 = p.rows * blockIdx.y / slices, r1 = p.rows * (blockIdx.y + 1) / slices;
  const float w = p.weight ? to_f(static_cast<const TW*>(p.weight)[col]) : 1.f;
  const float b = p.bias ? to_f(static_cast<const TW*>(p.bias)[col]) : 0.f;
  float dw = 0.f, db = 0.f;
  for (int64_t row = r0; row < r1; ++row) {
    const float mean = p.rms ? 0.f : static_cast<const float*>(p.mean)[row];
    const float rstd = static_cast<const float*>(p.rstd)[row];
    const float xhat =
        (to_f(static_cast<const typename K::TH*>(p.h)[row * p.h_row_stride + col]) - mean) * rstd;
    float dy = to_f(static_cast<const T*>(p.dout)[row * p.dout_row_stride + col]);
    if (p.act != Activation::kNone) dy *= activation_grad(p.act, xhat * w + b);
    dw += dy * xhat;
    db += dy;
  }
  float* ws = static_cast<float*>(p.workspace) + int64_t(blockIdx.y) * 2 * p.cols;
  ws[col] = dw;
  ws[p.cols + col] = db;
}

// dweight[c] = sum over partial rows q of workspace[q][0][c], in a fixed order (likewise dbias).
// CTA: 32 columns x 8 row lanes; lane l sums rows l, l+8, ...; then the 8 lanes are added in
// order through shared memory.
template <typename TW>
__global__ void __launch_bounds__(256)
    fused_add_norm_reduce_dwdb_kernel(const float* ws, int64_t partials, int64_t cols, TW* dweight,
                                      TW* dbias) {
  __shared__ float part[2][8][33];  // +1 column of padding: no bank conflicts on the transposed read
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t col = int64_t(blockIdx.x) * 32 + tx;
  float sw = 0.f, sb = 0.f;
  if (col < cols)
    for (int64_t q = ty; q < partials; q += 8) {
      sw += ws[q * 2 * cols + col];
      sb += ws[q * 2 * cols + cols + col];
    }
  part[0][ty][tx] = sw;
  part[1][ty][tx] = sb;
  __syncthreads();
  if (ty == 0 && col < cols) {
    float tw = 0.f, tb = 0.f;
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      tw += part[0][l][tx];
      tb += part[1][l][tx];
    }
    if (dweight) dweight[col] = from_f<TW>(tw);
    if (dbias) dbias[col] = from_f<TW>(tb);
  }
}

}  // namespace mmm
