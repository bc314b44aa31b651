// fused_add_norm's CPU algorithm, compiled once per instruction set by fused_add_norm_cpu.cpp
// (inside namespace mmm::MMM_CPU_ISA; no include guard, no includes on purpose).
//
// One row at a time through fp32 (fp64) row buffers that stay in L1/L2: each step is a plain
// loop over the row (convert, add, scale, ...) that vectorises; only dropout's Philox draw and
// the GeLU's erf/tanh are scalar. Weight and bias are converted once per call, not per row.

#include "core/cpu_rows.h"

namespace {

template <typename T, typename TH, typename TW>
struct Kernels {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;

  static void fwd(const FusedAddNormFwdParams& p, int64_t r0, int64_t r1) {
    const int64_t n = p.cols;
    // Absent weight/bias become 1/0 so the output is one fused loop whatever is present.
    std::vector<C> h(n), y(n), w(n, C(1)), b(n, C(0));
    if (p.weight) load_row(static_cast<const TW*>(p.weight), w.data(), n);
    if (p.bias) load_row(static_cast<const TW*>(p.bias), b.data(), n);
    const C scale = p.dropout_p > 0 ? C(1) / (C(1) - C(p.dropout_p)) : C(1);
    const uint32_t threshold = dropout_threshold(p.dropout_p);
    for (int64_t r = r0; r < r1; ++r) {
      load_row(static_cast<const T*>(p.x) + r * p.x_row_stride, h.data(), n);
      if (p.dropout_p > 0) {
        DropoutMask mask{p.seed, threshold};
        const uint64_t idx0 = uint64_t(r) * uint64_t(n);
        for (int64_t j = 0; j < n; ++j) h[j] = mask.keep(idx0 + j) ? h[j] * scale : C(0);
      }
      if (p.residual) {
        load_row(static_cast<const TH*>(p.residual) + r * p.res_row_stride, y.data(), n);
        for (int64_t j = 0; j < n; ++j) h[j] += y[j];
      }
      if (p.h_out) {
        // Normalise h as stored, the value backward reads back (see the CUDA kernel).
        TH* h_row = static_cast<TH*>(p.h_out) + r * p.h_row_stride;
        store_row(h.data(), h_row, n);
        if constexpr (!std::is_same_v<TH, C>) load_row(h_row, h.data(), n);
      }

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

      for (int64_t j = 0; j < n; ++j) y[j] = (h[j] - mean) * rstd * w[j] + b[j];
      if (p.act != Activation::kNone)
        for (int64_t j = 0; j < n; ++j) y[j] = activation_fwd(p.act, y[j]);
      store_row(y.data(), static_cast<T*>(p.out) + r * p.out_row_stride, n);
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
    std::vector<C> xhat(n), dy(n), tmp(n), w(n, C(1)), b(n, C(0));
    if (p.weight) load_row(static_cast<const TW*>(p.weight), w.data(), n);
    if (p.bias) load_row(static_cast<const TW*>(p.bias), b.data(), n);
    const C scale = p.dropout_p > 0 ? C(1) / (C(1) - C(p.dropout_p)) : C(1);
    const uint32_t threshold = dropout_threshold(p.dropout_p);
    for (int64_t r = r0; r < r1; ++r) {
      const C mean = p.rms ? C(0) : static_cast<const C*>(p.mean)[r];
      const C rstd = static_cast<const C*>(p.rstd)[r];
      load_row(static_cast<const TH*>(p.h) + r * p.h_row_stride, xhat.data(), n);
      load_row(static_cast<const T*>(p.dout) + r * p.dout_row_stride, dy.data(), n);
      for (int64_t j = 0; j < n; ++j) xhat[j] = (xhat[j] - mean) * rstd;
      if (p.act != Activation::kNone)
        for (int64_t j = 0; j < n; ++j) {
          dy[j] *= activation_grad(p.act, xhat[j] * w[j] + b[j]);
        }
      for (int64_t j = 0; j < n; ++j) {
        dw[j] += dy[j] * xhat[j];
        db[j] += dy[j];
        dy[j] *= w[j];  // dy becomes dxhat
      }
      // LayerNorm: dh = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); RMSNorm drops
      // the mean(dxhat) term because the mean was never subtracted.
      const C c1 = lane_sum<C>(n, [&](int64_t j) { return dy[j] * xhat[j]; }) / C(n);
      const C c2 = p.rms ? C(0) : lane_sum<C>(n, [&](int64_t j) { return dy[j]; }) / C(n);
      for (int64_t j = 0; j < n; ++j) tmp[j] = rstd * (dy[j] - c2 - xhat[j] * c1);
      if (p.dh_out) {
        load_row(static_cast<const TH*>(p.dh_out) + r * p.dh_out_row_stride, dy.data(), n);
        for (int64_t j = 0; j < n; ++j) tmp[j] += dy[j];
      }
      if (p.dresidual) store_row(tmp.data(), static_cast<TH*>(p.dresidual) + r * p.dres_row_stride, n);
      if (p.dropout_p > 0) {
        DropoutMask mask{p.seed, threshold};
        const uint64_t idx0 = uint64_t(r) * uint64_t(n);
        for (int64_t j = 0; j < n; ++j) tmp[j] = mask.keep(idx0 + j) ? tmp[j] * scale : C(0);
      }
      store_row(tmp.data(), static_cast<T*>(p.dx) + r * p.dx_row_stride, n);
    }
  }

  static void bwd_finalize(const FusedAddNormBwdParams& p, int64_t c0, int64_t c1) {
    const int64_t n = p.cols, parts = partitions(p);
    const C* ws = static_cast<const C*>(p.workspace);
    std::vector<C> sw(c1 - c0, C(0)), sb(c1 - c0, C(0));
    for (int64_t q = 0; q < parts; ++q)  // fixed order: bitwise reproducible
      for (int64_t j = c0; j < c1; ++j) {
        sw[j - c0] += ws[q * 2 * n + j];
        sb[j - c0] += ws[q * 2 * n + n + j];
      }
    if (p.dweight) store_row(sw.data(), static_cast<TW*>(p.dweight) + c0, c1 - c0);
    if (p.dbias) store_row(sb.data(), static_cast<TW*>(p.dbias) + c0, c1 - c0);
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

void fwd(const FusedAddNormFwdParams& p, int64_t row_begin, int64_t row_end) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.fwd(p, row_begin, row_end); });
}

int64_t bwd_partitions(const FusedAddNormBwdParams& p) {
  int64_t n = 0;
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { n = k.partitions(p); });
  return n;
}

void bwd_partition(const FusedAddNormBwdParams& p, int64_t partition) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.bwd_partition(p, partition); });
}

void bwd_finalize(const FusedAddNormBwdParams& p, int64_t col_begin, int64_t col_end) {
  dispatch(p.x_dtype, p.h_dtype, p.w_dtype, [&](auto k) { k.bwd_finalize(p, col_begin, col_end); });
}
