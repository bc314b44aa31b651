// fused_add_norm on the CPU: the same algorithm as the CUDA kernels, one row at a time.
// The caller parallelises over rows (forward) or over fixed row partitions (backward); inner
// loops run over contiguous columns with lane-split accumulators, so they vectorise without
// -ffast-math. Arithmetic in fp32 (fp64 for fp64 inputs, so gradcheck sees a float64 function).
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/numeric.h"
#include "core/philox.h"
#include "fused_add_norm/activation.h"
#include "fused_add_norm/params.h"

namespace mmm {
namespace {

template <typename C, typename T>
inline C load(const void* base, int64_t i) {
  const T v = static_cast<const T*>(base)[i];
  if constexpr (std::is_same_v<T, double>) return static_cast<C>(v);
  else return static_cast<C>(to_float(v));
}

// v as it reads back after a store as T (a no-op when T is as wide as C).
template <typename T, typename C>
inline C round_to(C v) {
  if constexpr (std::is_same_v<T, C> || (std::is_same_v<T, double>)) return v;
  else return static_cast<C>(to_float(from_float<T>(static_cast<float>(v))));
}

template <typename T, typename C>
inline void store(void* base, int64_t i, C v) {
  if constexpr (std::is_same_v<T, double>) static_cast<T*>(base)[i] = static_cast<double>(v);
  else static_cast<T*>(base)[i] = from_float<T>(static_cast<float>(v));
}

// Sum with kLanes independent partial sums: vectorises, and each lane adds N/kLanes terms,
// which keeps the rounding error of long rows small.
template <typename C, typename F>
inline C lane_sum(int64_t n, F&& term) {
  constexpr int kLanes = 16;
  C acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(j + l);
  for (; j < n; ++j) acc[0] += term(j);
  C s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// C: compute type. T: x/out/dx. TH: residual/residual_out/h/dresidual. TW: weight/bias.
template <typename T, typename TH, typename TW>
struct Kernels {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;

  static void fwd(const FusedAddNormFwdParams& p, int64_t r0, int64_t r1) {
    const int64_t n = p.cols;
    std::vector<C> h(n);
    const C scale = p.dropout_p > 0 ? C(1) / (C(1) - C(p.dropout_p)) : C(1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t xo = r * p.x_row_stride;
      DropoutMask mask{p.seed, dropout_threshold(p.dropout_p)};
      for (int64_t j = 0; j < n; ++j) {
        C v = load<C, T>(p.x, xo + j);
        if (p.dropout_p > 0) v = mask.keep(uint64_t(r) * n + j) ? v * scale : C(0);
        if (p.residual) v += load<C, TH>(p.residual, r * p.res_row_stride + j);
        // Statistics of the h that is stored and that backward reads back (see the CUDA kernel).
        h[j] = round_to<TH>(v);
      }
      if (p.h_out)
        for (int64_t j = 0; j < n; ++j) store<TH>(p.h_out, r * p.h_row_stride + j, h[j]);

      C mean = 0, var;
      if (p.rms) {
        var = lane_sum<C>(n, [&](int64_t j) { return h[j] * h[j]; }) / C(n);
      } else {
        mean = lane_sum<C>(n, [&](int64_t j) { return h[j]; }) / C(n);
        var = lane_sum<C>(n, [&](int64_t j) { const C d = h[j] - mean; return d * d; }) / C(n);
      }
      const C rstd = C(1) / std::sqrt(var + C(p.eps));
      if (!p.rms) static_cast<C*>(p.mean)[r] = mean;
      static_cast<C*>(p.rstd)[r] = rstd;

      const int64_t oo = r * p.out_row_stride;
      for (int64_t j = 0; j < n; ++j) {
        C y = (h[j] - mean) * rstd;
        if (p.weight) y *= load<C, TW>(p.weight, j);
        if (p.bias) y += load<C, TW>(p.bias, j);
        store<T>(p.out, oo + j, activation_fwd(p.act, y));
      }
    }
  }

  static int64_t partitions(const FusedAddNormBwdParams& p) {
    constexpr int64_t kMaxPartitions = 32;
    return p.rows < kMaxPartitions ? p.rows : kMaxPartitions;
  }

  // Workspace: [partition][dweight, dbias][N] in C.
  static void bwd_partition(const FusedAddNormBwdParams& p, int64_t part) {
    const int64_t n = p.cols, parts = partitions(p);
    const int64_t r0 = p.rows * part / parts, r1 = p.rows * (part + 1) / parts;
    C* dw = static_cast<C*>(p.workspace) + part * 2 * n;
    C* db = dw + n;
    for (int64_t j = 0; j < 2 * n; ++j) dw[j] = 0;
    std::vector<C> xhat(n), dxhat(n);
    const C scale = p.dropout_p > 0 ? C(1) / (C(1) - C(p.dropout_p)) : C(1);
    for (int64_t r = r0; r < r1; ++r) {
      const C mean = p.rms ? C(0) : static_cast<const C*>(p.mean)[r];
      const C rstd = static_cast<const C*>(p.rstd)[r];
      for (int64_t j = 0; j < n; ++j) {
        const C xh = (load<C, TH>(p.h, r * p.h_row_stride + j) - mean) * rstd;
        const C w = p.weight ? load<C, TW>(p.weight, j) : C(1);
        C dy = load<C, T>(p.dout, r * p.dout_row_stride + j);
        if (p.act != Activation::kNone) {
          const C b = p.bias ? load<C, TW>(p.bias, j) : C(0);
          dy *= activation_grad(p.act, xh * w + b);
        }
        dw[j] += dy * xh;
        db[j] += dy;
        xhat[j] = xh;
        dxhat[j] = dy * w;
      }
      // LayerNorm: dh = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); RMSNorm drops
      // the mean(dxhat) term because the mean was never subtracted.
      const C c1 = lane_sum<C>(n, [&](int64_t j) { return dxhat[j] * xhat[j]; }) / C(n);
      const C c2 = p.rms ? C(0) : lane_sum<C>(n, [&](int64_t j) { return dxhat[j]; }) / C(n);
      DropoutMask mask{p.seed, dropout_threshold(p.dropout_p)};
      for (int64_t j = 0; j < n; ++j) {
        C dh = rstd * (dxhat[j] - c2 - xhat[j] * c1);
        if (p.dh_out) dh += load<C, TH>(p.dh_out, r * p.dh_out_row_stride + j);
        if (p.dresidual) store<TH>(p.dresidual, r * p.dres_row_stride + j, dh);
        if (p.dropout_p > 0) dh = mask.keep(uint64_t(r) * n + j) ? dh * scale : C(0);
        store<T>(p.dx, r * p.dx_row_stride + j, dh);
      }
    }
  }

  static void bwd_finalize(const FusedAddNormBwdParams& p, int64_t c0, int64_t c1) {
    const int64_t n = p.cols, parts = partitions(p);
    const C* ws = static_cast<const C*>(p.workspace);
    for (int64_t j = c0; j < c1; ++j) {
      C sw = 0, sb = 0;
      for (int64_t q = 0; q < parts; ++q) {  // fixed order: bitwise reproducible
        sw += ws[q * 2 * n + j];
        sb += ws[q * 2 * n + n + j];
      }
      if (p.dweight) store<TW>(p.dweight, j, sw);
      if (p.dbias) store<TW>(p.dbias, j, sb);
    }
  }
};

// One switch from runtime dtypes to the instantiation; the glue has already rejected every
// combination not listed here.
template <typename F>
void dispatch(DType x, DType h, DType w, F&& f) {
  auto with_w = [&](auto tx, auto th) {
    using TX = decltype(tx);
    if (w == DType::kFloat32) f(Kernels<TX, decltype(th), float>{});
    else f(Kernels<TX, decltype(th), TX>{});
  };
  switch (x) {
    case DType::kFloat32: f(Kernels<float, float, float>{}); break;
    case DType::kFloat64:
      if (h == DType::kFloat32) with_w(double{}, float{}); else with_w(double{}, double{});
      break;
    case DType::kFloat16:
      if (h == DType::kFloat32) with_w(Half{}, float{}); else with_w(Half{}, Half{});
      break;
    case DType::kBFloat16:
      if (h == DType::kFloat32) with_w(BFloat16{}, float{}); else with_w(BFloat16{}, BFloat16{});
      break;
  }
}

}  // namespace

void fused_add_norm_fwd_cpu(const FusedAddNormFwdParams& p, int64_t row_begin, int64_t row_end) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.fwd(p, row_begin, row_end); });
}

int64_t fused_add_norm_bwd_cpu_partitions(const FusedAddNormBwdParams& p) {
  int64_t n = 0;
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { n = k.partitions(p); });
  return n;
}

size_t fused_add_norm_bwd_cpu_workspace_bytes(const FusedAddNormBwdParams& p) {
  const size_t elem = p.x_dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return size_t(fused_add_norm_bwd_cpu_partitions(p)) * 2 * size_t(p.cols) * elem;
}

void fused_add_norm_bwd_cpu_partition(const FusedAddNormBwdParams& p, int64_t partition) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.bwd_partition(p, partition); });
}

void fused_add_norm_bwd_cpu_finalize(const FusedAddNormBwdParams& p, int64_t col_begin,
                                     int64_t col_end) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.bwd_finalize(p, col_begin, col_end); });
}

}  // namespace mmm
