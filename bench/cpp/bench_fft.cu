// Standalone benchmark of mmm's FFT CUDA kernels (no torch): complex fft (forward) and rfft.
//
//   fft   complex64 rows of n -> n bins;   rfft  float32 rows of n -> n/2 + 1 complex64 bins
//   (unnormalised: norm="backward"), along rows of a dense (rows, n) matrix.
//
// Sweep: n in {256, 512, ..., 65536}, rows such that x is 128 MB (--quick: 32 MB, n in {256, 4096,
// 65536}). Flags: see --help.
//
// Method: inputs filled on the device by a hash-based kernel (untimed); before each timed run the
// L2 is flushed by a cudaMemsetAsync of 4x the L2 size; each run is bracketed by CUDA events on
// one stream; median of --reps runs (default 50) after 5 untimed warm-up runs.
//
// Byte model (GB/s = bytes / median time, decimal):
//   fft   read x, write y:  2 * rows * n * 8
//   rfft  read x (rows * n * 4), write y (rows * (n/2 + 1) * 8)
// For n beyond one CTA's shared memory the four-step path moves a workspace once more (not
// counted, so it shows as lower GB/s). "%BW" = GB/s over the copy bandwidth measured here.
// path: mmm::fft_cuda_path ("cta x2": each row split over two CTAs, which read it twice); where it
// is "cta x2" the same case also runs with FftParams::split_rows = false (op "fft_1cta"): one CTA
// per row, what the split gains side by side.
//
// Check: after the first run of each case, rows {0, 1, rows-1} are compared with the CPU twin
// (fft_rows_cpu, the same algorithm in fp32 on the host): max |gpu - cpu| / max |cpu| must be under
// 1e-5. A failed check, like any CUDA or launcher error, makes the program exit with status 1.
#include <cstdio>
#include <string>
#include <vector>

#include "fft/params.h"  // include dir: csrc/
#include "bench_common.cuh"

using mmm::DType;
using mmm::FftKind;
using namespace mmm_bench;

namespace {

const char* kUsage =
    "usage: bench_fft [--json PATH] [--reps N] [--quick] [--n N1,N2,...] [--no-check 1]\n"
    "  --json PATH   write the records as JSON to PATH (overwritten)\n"
    "  --reps N      timed runs per measurement (default 50; with --quick 10)\n"
    "  --quick       n in {256, 4096, 65536}, 32 MB inputs, fewer runs\n"
    "  --n LIST      comma-separated powers of two instead of the default sweep\n"
    "  --no-check 1  skip the comparison with the CPU twin\n"
    "  env MMM_COMMIT is recorded in the JSON as the commit.\n";

struct Case {
  FftKind kind;
  int64_t rows, n;  // n: signal length (real length for rfft)
  bool split_rows = true;
};

const char* kind_name(FftKind k) { return k == FftKind::kC2C ? "fft" : "rfft"; }

int ilog2(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Args::parse(argc, argv, {"--n", "--no-check"}, kUsage);
  const bool do_check = args.get("--no-check", "0") == "0";
  const int reps = args.reps > 0 ? args.reps : (args.quick ? 10 : 50);
  std::vector<int64_t> ns;
  if (args.quick) ns = {256, 4096, 65536};
  else for (int l = 8; l <= 16; ++l) ns.push_back(int64_t(1) << l);
  if (args.get("--n", "") != "")
    ns = parse_list(args.get("--n", ""), "--n", [](long long x) { return x >= 2 && !(x & (x - 1)); },
                    " (powers of two >= 2)");
  const int64_t x_bytes = int64_t(args.quick ? 32 : 128) << 20;

  BenchDevice bd("bench_fft");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header("one CTA up to " + std::to_string(mmm::fft_cuda_max_cta_points(dev.id)) + " points");

  std::vector<Case> cases;
  for (int64_t n : ns)
    for (FftKind k : {FftKind::kC2C, FftKind::kR2C}) {
      cases.push_back({k, x_bytes / (n * (k == FftKind::kC2C ? 8 : 4)), n});
      mmm::FftParams probe;
      probe.kind = k;
      probe.log2n = ilog2(k == FftKind::kR2C ? n / 2 : n);
      if (std::string(mmm::fft_cuda_path(probe, dev.id)) == "cta x2") cases.push_back({k, cases.back().rows, n, false});
    }

  Table table({"op", "n", "rows", "time us", "GB/s", "% copy BW", "path", "check"});
  std::vector<JsonObject> records;
  int failures = 0;
  uint64_t seed = 1;
  DeviceBuffer x{size_t(x_bytes)}, y{size_t(x_bytes) + (size_t(x_bytes) >> 4) + 64}, ws;

  for (const Case& c : cases) {
    const bool real = c.kind == FftKind::kR2C;
    const int64_t in_floats = real ? c.n : 2 * c.n, out_c = real ? c.n / 2 + 1 : c.n;  // per row
    fill_random(x.get(), size_t(c.rows * in_floats), DType::kFloat32, seed++, -1.f, 1.f, stream);
    mmm::FftParams p;
    p.kind = c.kind;
    p.log2n = ilog2(real ? c.n / 2 : c.n);
    p.rows = c.rows;
    p.x = x.get();
    p.x_row_stride = c.n;  // in floats (rfft) / complex (fft)
    p.y = y.get();
    p.y_row_stride = out_c;
    p.scale = 1.0;
    p.split_rows = c.split_rows;
    const size_t wsb = mmm::fft_cuda_workspace_bytes(p, dev.id);
    ws.resize(std::max<size_t>(wsb, 16));
    const std::string op = std::string(kind_name(c.kind)) + (c.split_rows ? "" : "_1cta");
    const std::string tag = op + " n=" + std::to_string(c.n);
    auto run = [&] { MMM_CHECK_LAUNCH(mmm::launch_fft(p, ws.get(), stream), tag); };
    run();
    MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
    std::string check = "-";
    double err = NAN;
    if (do_check) {
      const std::vector<int64_t> idx = {0, std::min<int64_t>(1, c.rows - 1), c.rows - 1};
      const int64_t k = int64_t(idx.size());
      std::vector<float> hx(size_t(k * in_floats)), hy(size_t(k * out_c * 2)), ref(size_t(k * out_c * 2));
      for (int64_t i = 0; i < k; ++i) {
        MMM_CHECK_CUDA(cudaMemcpy(hx.data() + i * in_floats, static_cast<const float*>(x.get()) + idx[i] * in_floats,
                                  in_floats * 4, cudaMemcpyDeviceToHost));
        MMM_CHECK_CUDA(cudaMemcpy(hy.data() + i * out_c * 2, static_cast<const float*>(y.get()) + idx[i] * out_c * 2,
                                  out_c * 8, cudaMemcpyDeviceToHost));
      }
      mmm::FftParams hp = p;
      hp.rows = k;
      hp.x = hx.data();
      hp.y = ref.data();
      mmm::fft_rows_cpu(hp, 0, k);
      double md = 0, mr = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        md = std::max(md, std::isfinite(hy[i]) ? std::fabs(double(hy[i]) - ref[i]) : INFINITY);
        mr = std::max(mr, std::fabs(double(ref[i])));
      }
      err = md / (mr > 0 ? mr : 1.0);
      check = err <= 1e-5 ? "ok" : "FAIL " + fmtf("%.1e", err);
      failures += err <= 1e-5 ? 0 : 1;
    }
    const double bytes = real ? double(c.rows) * (c.n * 4 + out_c * 8) : 2.0 * c.rows * c.n * 8;
    const Timing t = time_median(run, stream, &flusher, reps, 5);
    const double gbps = bytes / (t.median_ms * 1e-3) / 1e9, pct = 100.0 * bytes / (t.median_ms * 1e-3) / copy_bps;
    const char* path = mmm::fft_cuda_path(p, dev.id);
    table.add({op, std::to_string(c.n), std::to_string(c.rows), fmtf("%.1f", t.median_ms * 1e3),
               fmtf("%.0f", gbps), fmtf("%.1f", pct), path, check});
    JsonObject j;
    j.str("op", op).integer("n", c.n).integer("rows", c.rows).str("path", path).num("bytes", bytes)
        .num("GBps", gbps).num("pct_copy_bw", pct).str("check", check)
        .num("check_rel_err", err);
    add_timing(j, t);
    records.push_back(j);
  }
  MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
  table.print();
  print_copy_bandwidth(copy_bps);
  return bd.finish(args.json_path, "fft", records, bd.env(reps), failures);
}
