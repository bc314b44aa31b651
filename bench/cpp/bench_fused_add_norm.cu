// Standalone benchmark of mmm's fused_add_norm CUDA kernels (no torch).
//
//   h = dropout(x, p) + residual;  y = LayerNorm(h) * weight + bias  (RMSNorm: no bias);
//   out = act(y);  residual_out = h  (prenorm: always written here)
//
// Sweep: N in {256, 1024, 4096, 8192, 16384, 65536}, rows = min(16384, 2^28 / N),
// dtype in {bf16, fp16} (x, residual, weight and bias all in that dtype), LayerNorm (+bias) and
// RMSNorm (no bias), with residual, forward and backward. Flags: see --help.
//
// Method: inputs filled on the device by a hash-based kernel (untimed); before each timed run the
// L2 is flushed by a cudaMemsetAsync of a buffer of 4x the L2 size (queried); each run is
// bracketed by CUDA events on one stream; the median of --reps runs (default 50) is reported,
// after 5 untimed warm-up runs. The backward is timed on the outputs of a forward run.
//
// Byte model (E = rows*N, s = bytes per element, stats = rows*4 per statistic: rstd, + mean for
// LayerNorm; GB/s = bytes / median time, decimal):
//   fwd  read x, residual (E*s each), weight, bias (N*s each)
//        write out, residual_out (E*s each), stats
//   bwd  read dout, dresidual_out, h (E*s each), weight, bias (N*s each), stats
//        write dx, dresidual (E*s each), dweight, dbias (N*s each)
// (The fused backward's fp32 workspace traffic for dweight/dbias is not counted.)
// "%BW" = GB/s over the copy bandwidth measured here (cudaMemcpyAsync D2D of 1 GiB, read+write).
//
// Check: after the first forward and backward of each case, rows {0, 1, rows-1} of out,
// residual_out, dx and dresidual are compared with the CPU twin (fused_add_norm_*_cpu) run on
// copies of the same rows: max |gpu - cpu| / max |cpu| must be under 2e-2 (bf16) or 4e-3 (fp16).
// With dropout only rows {0, 1} (the mask is keyed by row * N + col, so a packed copy of a later
// row would draw another mask). A failed check, like any CUDA or launcher error, makes the
// program exit with status 1 (after printing and writing the JSON). dweight/dbias are not checked.
#include <cstdio>
#include <string>
#include <vector>

#include "fused_add_norm/params.h"  // include dir: csrc/
#include "bench_common.cuh"

using mmm::DType;
using namespace mmm_bench;

namespace {

const char* kUsage =
    "usage: bench_fused_add_norm [--json PATH] [--reps N] [--quick] [--act none|gelu|gelu_tanh]\n"
    "                            [--dropout P] [--n N1,N2,...] [--no-check 1]\n"
    "  --json PATH   write the records as JSON to PATH (overwritten)\n"
    "  --reps N      timed runs per measurement (default 50; with --quick 10)\n"
    "  --quick       N in {1024, 8192} only, fewer runs\n"
    "  --act A       activation for every case (default none)\n"
    "  --dropout P   dropout probability for every case (default 0)\n"
    "  --n LIST      comma-separated N values instead of the default sweep\n"
    "  --no-check 1  skip the comparison with the CPU twin\n"
    "  env MMM_COMMIT is recorded in the JSON as the commit.\n";

struct Case {
  int64_t rows, n;
  DType dt;
  bool rms;
};

int64_t rows_for(int64_t n) { return std::min<int64_t>(16384, (int64_t(1) << 28) / n); }

mmm::Activation parse_act(const std::string& s) {
  if (s == "none") return mmm::Activation::kNone;
  if (s == "gelu") return mmm::Activation::kGelu;
  if (s == "gelu_tanh") return mmm::Activation::kGeluTanh;
  std::fprintf(stderr, "bad --act %s\n%s", s.c_str(), kUsage);
  std::exit(2);
}

// Bytes the op must move (see the header comment).
struct Bytes { double fwd, bwd; };
Bytes byte_model(const Case& c) {
  const double e = double(c.rows) * c.n, s = double(dtype_size(c.dt));
  const double nw = double(c.n) * s * (c.rms ? 1 : 2);
  const double stats = double(c.rows) * 4 * (c.rms ? 1 : 2);
  return {4 * e * s + nw + stats, 5 * e * s + 2 * nw + stats};
}

// Copy rows `idx` of a (rows, n) device matrix of `es`-byte elements into a packed host buffer.
std::vector<unsigned char> gather_rows(const void* dev, int64_t n, size_t es,
                                       const std::vector<int64_t>& idx) {
  std::vector<unsigned char> h(idx.size() * n * es);
  for (size_t k = 0; k < idx.size(); ++k)
    MMM_CHECK_CUDA(cudaMemcpy(h.data() + k * n * es, static_cast<const char*>(dev) + idx[k] * n * es,
                              n * es, cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Args::parse(argc, argv, {"--act", "--dropout", "--n", "--no-check"}, kUsage);
  const mmm::Activation act = parse_act(args.get("--act", "none"));
  const float dropout_p = std::stof(args.get("--dropout", "0"));
  const bool do_check = args.get("--no-check", "0") == "0";
  const int reps = args.reps > 0 ? args.reps : (args.quick ? 10 : 50);
  std::vector<int64_t> ns = args.quick ? std::vector<int64_t>{1024, 8192}
                                       : std::vector<int64_t>{256, 1024, 4096, 8192, 16384, 65536};
  if (args.get("--n", "") != "") ns = parse_list(args.get("--n", ""));

  BenchDevice bd("bench_fused_add_norm");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header("act " + args.get("--act", "none") + ", dropout " + fmtf("%g", dropout_p));

  std::vector<Case> cases;
  for (DType dt : {DType::kBFloat16, DType::kFloat16})
    for (bool rms : {false, true})
      for (int64_t n : ns) cases.push_back({rows_for(n), n, dt, rms});

  size_t max_e = 0, max_n = 0, max_rows = 0;
  for (auto& c : cases) {
    max_e = std::max<size_t>(max_e, size_t(c.rows) * c.n);
    max_n = std::max<size_t>(max_n, c.n);
    max_rows = std::max<size_t>(max_rows, c.rows);
  }
  const size_t es_max = 2;  // bf16 / fp16
  DeviceBuffer x(max_e * es_max), res(max_e * es_max), out(max_e * es_max), hout(max_e * es_max),
      dout(max_e * es_max), dhout(max_e * es_max), dx(max_e * es_max), dres(max_e * es_max);
  DeviceBuffer w(max_n * 4), b(max_n * 4), dw(max_n * 4), db(max_n * 4);
  DeviceBuffer mean(max_rows * 4), rstd(max_rows * 4), workspace;

  Table table({"N", "rows", "dtype", "norm", "op", "time us", "GB/s", "% copy BW", "check"});
  std::vector<JsonObject> records;
  int failures = 0;
  uint64_t seed = 1;

  for (const Case& c : cases) {
    const size_t e = size_t(c.rows) * c.n, es = dtype_size(c.dt);
    fill_random(x.get(), e, c.dt, seed++, -2.f, 2.f, stream);
    fill_random(res.get(), e, c.dt, seed++, -2.f, 2.f, stream);
    fill_random(w.get(), c.n, c.dt, seed++, 0.5f, 1.5f, stream);
    fill_random(b.get(), c.n, c.dt, seed++, -0.5f, 0.5f, stream);
    fill_random(dout.get(), e, c.dt, seed++, -1.f, 1.f, stream);
    fill_random(dhout.get(), e, c.dt, seed++, -1.f, 1.f, stream);

    mmm::FusedAddNormFwdParams fp;
    fp.rows = c.rows; fp.cols = c.n;
    fp.x = x.get(); fp.x_row_stride = c.n; fp.x_dtype = c.dt;
    fp.residual = res.get(); fp.res_row_stride = c.n;
    fp.weight = w.get(); fp.bias = c.rms ? nullptr : b.get(); fp.w_dtype = c.dt;
    fp.out = out.get(); fp.out_row_stride = c.n;
    fp.h_out = hout.get(); fp.h_row_stride = c.n; fp.h_dtype = c.dt;
    fp.mean = c.rms ? nullptr : mean.get<float>();
    fp.rstd = rstd.get<float>();
    fp.eps = 1e-5f; fp.rms = c.rms; fp.act = act; fp.dropout_p = dropout_p; fp.seed = 1234;

    mmm::FusedAddNormBwdParams bp;
    bp.rows = c.rows; bp.cols = c.n;
    bp.dout = dout.get(); bp.dout_row_stride = c.n;
    bp.dh_out = dhout.get(); bp.dh_out_row_stride = c.n;
    bp.h = hout.get(); bp.h_row_stride = c.n;
    bp.x_dtype = c.dt; bp.h_dtype = c.dt;
    bp.weight = w.get(); bp.bias = fp.bias; bp.w_dtype = c.dt;
    bp.mean = fp.mean; bp.rstd = fp.rstd;
    bp.dx = dx.get(); bp.dx_row_stride = c.n;
    bp.dresidual = dres.get(); bp.dres_row_stride = c.n;
    bp.dweight = dw.get(); bp.dbias = c.rms ? nullptr : db.get();
    bp.rms = c.rms; bp.act = act; bp.dropout_p = dropout_p; bp.seed = fp.seed;
    const size_t ws = mmm::fused_add_norm_bwd_cuda_workspace_bytes(bp, dev.id);
    workspace.resize(std::max<size_t>(ws, 16));
    bp.workspace = workspace.get<float>();

    const std::string tag = std::string(dtype_name(c.dt)) + (c.rms ? " rms" : " ln") + " N=" +
                            std::to_string(c.n);
    auto fwd = [&] { MMM_CHECK_LAUNCH(mmm::launch_fused_add_norm_fwd(fp, stream), "fwd " + tag); };
    auto bwd = [&] { MMM_CHECK_LAUNCH(mmm::launch_fused_add_norm_bwd(bp, stream), "bwd " + tag); };

    // One untimed forward + backward, then the check against the CPU twin.
    fwd();
    bwd();
    MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
    std::string check_fwd = "-", check_bwd = "-";
    double err_fwd = NAN, err_bwd = NAN;
    if (do_check) {
      // With dropout, only rows that keep their index in the packed copy (the mask is keyed by
      // row * N + col), i.e. the leading ones.
      std::vector<int64_t> idx = {0, std::min<int64_t>(1, c.rows - 1)};
      if (dropout_p == 0.f) idx.push_back(c.rows - 1);
      const int64_t k = int64_t(idx.size());
      auto hx = gather_rows(x.get(), c.n, es, idx), hres = gather_rows(res.get(), c.n, es, idx);
      auto hdout = gather_rows(dout.get(), c.n, es, idx), hdh = gather_rows(dhout.get(), c.n, es, idx);
      auto hw = to_host(w.get(), c.n * es), hb = to_host(b.get(), c.n * es);
      std::vector<unsigned char> rout(k * c.n * es), rh(k * c.n * es), rdx(k * c.n * es),
          rdres(k * c.n * es);
      std::vector<float> rmean(k), rrstd(k);

      mmm::FusedAddNormFwdParams hp = fp;
      hp.rows = k;
      hp.x = hx.data(); hp.residual = hres.data(); hp.weight = hw.data();
      hp.bias = c.rms ? nullptr : hb.data();
      hp.out = rout.data(); hp.h_out = rh.data();
      hp.mean = c.rms ? nullptr : rmean.data(); hp.rstd = rrstd.data();
      mmm::fused_add_norm_fwd_cpu(hp, 0, k);

      mmm::FusedAddNormBwdParams hbp = bp;
      hbp.rows = k;
      hbp.dout = hdout.data(); hbp.dh_out = hdh.data(); hbp.h = rh.data();
      hbp.weight = hw.data(); hbp.bias = hp.bias;
      hbp.mean = hp.mean; hbp.rstd = hp.rstd;
      hbp.dx = rdx.data(); hbp.dresidual = rdres.data();
      std::vector<unsigned char> hdw(c.n * es), hdb(c.n * es);
      hbp.dweight = hdw.data(); hbp.dbias = c.rms ? nullptr : hdb.data();
      std::vector<float> hws(mmm::fused_add_norm_bwd_cpu_workspace_bytes(hbp) / sizeof(float) + 1);
      hbp.workspace = hws.data();
      const int64_t parts = mmm::fused_add_norm_bwd_cpu_partitions(hbp);
      for (int64_t pi = 0; pi < parts; ++pi) mmm::fused_add_norm_bwd_cpu_partition(hbp, pi);
      mmm::fused_add_norm_bwd_cpu_finalize(hbp, 0, c.n);

      const size_t cnt = size_t(k) * c.n;
      const double tol = c.dt == DType::kBFloat16 ? 2e-2 : 4e-3;
      err_fwd = std::max(rel_err(gather_rows(out.get(), c.n, es, idx).data(), rout.data(), cnt, c.dt),
                         rel_err(gather_rows(hout.get(), c.n, es, idx).data(), rh.data(), cnt, c.dt));
      err_bwd = std::max(rel_err(gather_rows(dx.get(), c.n, es, idx).data(), rdx.data(), cnt, c.dt),
                         rel_err(gather_rows(dres.get(), c.n, es, idx).data(), rdres.data(), cnt, c.dt));
      check_fwd = err_fwd <= tol ? "ok" : "FAIL " + fmtf("%.1e", err_fwd);
      check_bwd = err_bwd <= tol ? "ok" : "FAIL " + fmtf("%.1e", err_bwd);
      failures += (err_fwd <= tol ? 0 : 1) + (err_bwd <= tol ? 0 : 1);
    }

    const Bytes bytes = byte_model(c);
    const Timing tf = time_median(fwd, stream, &flusher, reps, 5);
    const Timing tb = time_median(bwd, stream, &flusher, reps, 5);
    struct { const char* op; const Timing& t; double bytes; const std::string& check; double err; } rows[] = {
        {"fwd", tf, bytes.fwd, check_fwd, err_fwd}, {"bwd", tb, bytes.bwd, check_bwd, err_bwd}};
    for (auto& r : rows) {
      const double gbps = r.bytes / (r.t.median_ms * 1e-3) / 1e9;
      const double pct = 100.0 * r.bytes / (r.t.median_ms * 1e-3) / copy_bps;
      table.add({std::to_string(c.n), std::to_string(c.rows), dtype_name(c.dt), c.rms ? "rms" : "ln",
                 r.op, fmtf("%.1f", r.t.median_ms * 1e3), fmtf("%.0f", gbps), fmtf("%.1f", pct),
                 r.check});
      JsonObject j;
      j.integer("N", c.n).integer("rows", c.rows).str("dtype", dtype_name(c.dt))
          .str("norm", c.rms ? "rms" : "layernorm").boolean("bias", !c.rms).boolean("residual", true)
          .boolean("prenorm", true).str("activation", args.get("--act", "none"))
          .num("dropout_p", dropout_p).str("op", r.op).num("bytes", r.bytes).num("GBps", gbps)
          .num("pct_copy_bw", pct).str("check", r.check).num("check_rel_err", r.err);
      add_timing(j, r.t);
      records.push_back(j);
    }
  }
  MMM_CHECK_CUDA(cudaStreamSynchronize(stream));

  table.print();
  print_copy_bandwidth(copy_bps);
  JsonObject extra = bd.env(reps);
  extra.str("activation", args.get("--act", "none")).num("dropout_p", dropout_p);
  return bd.finish(args.json_path, "fused_add_norm", records, extra, failures);
}
