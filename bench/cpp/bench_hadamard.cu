// Standalone benchmark of mmm's Walsh-Hadamard transform CUDA kernels (no torch).
//
//   y = scale * H_m · pad(x) along rows of a dense (rows, n) matrix, truncated back to n; m = the
//   next power of two >= n, H_m Sylvester-ordered, scale = 1/sqrt(m) (orthonormal), fp32 math.
//
// Sweep: fp32, fp16 and bf16 at n in {256, 512, ..., 32768, 65536}, plus bf16 at n = 14336
// (padded to 16384); rows such that x is 128 MB (--quick: 32 MB, n in {256, 4096, 65536}). A row
// of up to 32768 elements (fp32 in shared memory: 128 KB) is one CTA's segment on GPUs with
// >= 128 KB of shared memory per block (A100, H100); longer rows (65536 everywhere) take the
// two-pass path: the segment pass into an fp32 workspace of rows * m * 4 bytes (the size
// hadamard_cuda_workspace_bytes asks for, allocated here) and the column pass. On sm_90 a row
// of 32768 goes to a cluster of two CTAs (its one CTA would fill an SM alone); those cases also
// run with HadamardParams::split_rows = false (op "hadamard_1cta"). The table's "path" column
// says which ran (hadamard_cuda_path: 1 CTA, cluster x2, 2-pass). Flags: see --help.
//
// Method: inputs filled on the device by a hash-based kernel (untimed); before each timed run the
// L2 is flushed by a cudaMemsetAsync of 4x the L2 size; each run is bracketed by CUDA events on
// one stream; median of --reps runs (default 50) after 5 untimed warm-up runs.
//
// Byte model (E = rows * n, the stored length: the padding is never stored; s = bytes per
// element; GB/s = bytes / median time, decimal):
//   read x, write y:  2 * E * s
// The two-pass path writes and reads the fp32 workspace once more (2 * rows * m * 4 bytes, not
// counted, so it shows as lower GB/s). "%BW" = GB/s over the copy bandwidth measured here
// (cudaMemcpyAsync D2D of 1 GiB, read + write).
//
// Check: after the first run of each case, rows {0, 1, rows-1} are compared with the CPU twin
// (hadamard_cpu: the same transform in fp32 on host copies of those rows, rounded once to the
// dtype, like the kernel): max |gpu - cpu| / max |cpu| must be under 2e-2 (bf16), 4e-3 (fp16) or
// 1e-5 (fp32). Both sides do the same fp32 butterflies (a + b, a - b) stride by stride in
// increasing order and scale once at the end, so they should agree bit for bit; the tolerances
// leave room for one ulp of the dtype (2^-7 relative for bf16, 2^-10 for fp16) and still catch
// any wrong index (an O(1) error). A failed check, like any CUDA or launcher error, makes the
// program exit with status 1.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "hadamard/params.h"  // include dir: csrc/
#include "bench_common.cuh"

using mmm::DType;
using namespace mmm_bench;

namespace {

const char* kUsage =
    "usage: bench_hadamard [--json PATH] [--reps N] [--quick] [--n N1,N2,...] [--no-check 1]\n"
    "  --json PATH   write the records as JSON to PATH (overwritten)\n"
    "  --reps N      timed runs per measurement (default 50; with --quick 10)\n"
    "  --quick       n in {256, 4096, 65536}, 32 MB inputs, fewer runs\n"
    "  --n LIST      comma-separated lengths (1 .. 524288; not a power of two: zero padded)\n"
    "                instead of the default sweep, each in fp32, fp16 and bf16\n"
    "  --no-check 1  skip the comparison with the CPU twin\n"
    "  env MMM_COMMIT is recorded in the JSON as the commit.\n";

constexpr int64_t kMaxN = int64_t(1) << 19;  // the glue's limit (two passes on every sm_80+ GPU)

struct Case {
  DType dt;
  int64_t n;
};

int64_t next_pow2(int64_t v) {
  int64_t m = 1;
  while (m < v) m *= 2;
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Args::parse(argc, argv, {"--n", "--no-check"}, kUsage);
  const bool do_check = args.get("--no-check", "0") == "0";
  const int reps = args.reps > 0 ? args.reps : (args.quick ? 10 : 50);
  const std::vector<DType> dts = {DType::kBFloat16, DType::kFloat16, DType::kFloat32};
  std::vector<Case> cases;
  if (args.get("--n", "") != "") {
    const std::vector<int64_t> ns =
        parse_list(args.get("--n", ""), "--n", [](long long x) { return x <= kMaxN; }, " (1 .. 524288)");
    for (DType dt : dts)
      for (int64_t n : ns) cases.push_back({dt, n});
  } else {
    std::vector<int64_t> ns;
    if (args.quick) ns = {256, 4096, 65536};
    else for (int l = 8; l <= 16; ++l) ns.push_back(int64_t(1) << l);
    for (DType dt : dts)
      for (int64_t n : ns) cases.push_back({dt, n});
    if (!args.quick) cases.push_back({DType::kBFloat16, 14336});
  }
  const int64_t x_bytes = int64_t(args.quick ? 32 : 128) << 20;

  BenchDevice bd("bench_hadamard");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header();

  Table table({"op", "dtype", "n", "rows", "time us", "GB/s", "% copy BW", "path", "check"});
  std::vector<JsonObject> records;
  int failures = 0;
  uint64_t seed = 1;
  // x and y hold x_bytes rounded down to whole rows (at least one row); the workspace grows to
  // the largest size a case asks for.
  DeviceBuffer x, y, ws;

  for (const Case& c : cases) {
    const size_t es = dtype_size(c.dt);
    const int64_t m = next_pow2(c.n);
    const int64_t rows = std::max<int64_t>(1, x_bytes / (c.n * int64_t(es)));
    const size_t e = size_t(rows * c.n);  // elements of x (and of y)
    x.resize(e * es);
    y.resize(e * es);
    fill_random(x.get(), e, c.dt, seed++, -1.f, 1.f, stream);
    mmm::HadamardParams p;
    p.rows = rows;
    p.n = c.n;
    p.n_pow2 = m;
    p.x = x.get();
    p.x_row_stride = c.n;
    p.y = y.get();
    p.y_row_stride = c.n;
    p.dtype = c.dt;
    p.scale = 1.0 / std::sqrt(double(m));
    const size_t wsb = mmm::hadamard_cuda_workspace_bytes(p, dev.id);  // rows * m * 4, or 0 (one pass)
    ws.resize(std::max<size_t>(wsb, 16));
    const std::string tag = std::string(dtype_name(c.dt)) + " n=" + std::to_string(c.n);
    auto run = [&] { MMM_CHECK_LAUNCH(mmm::launch_hadamard(p, ws.get(), stream), tag); };
    run();
    MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
    std::string check = "-";
    double err = NAN;
    if (do_check) {
      const std::vector<int64_t> idx = {0, std::min<int64_t>(1, rows - 1), rows - 1};
      const int64_t k = int64_t(idx.size());
      const size_t row_b = size_t(c.n) * es;
      std::vector<unsigned char> hx(k * row_b), hy(k * row_b), ref(k * row_b);
      for (int64_t i = 0; i < k; ++i) {
        MMM_CHECK_CUDA(cudaMemcpy(hx.data() + i * row_b, x.get<unsigned char>() + idx[i] * row_b, row_b,
                                  cudaMemcpyDeviceToHost));
        MMM_CHECK_CUDA(cudaMemcpy(hy.data() + i * row_b, y.get<unsigned char>() + idx[i] * row_b, row_b,
                                  cudaMemcpyDeviceToHost));
      }
      mmm::HadamardParams hp = p;
      hp.rows = k;
      hp.x = hx.data();
      hp.y = ref.data();
      mmm::hadamard_cpu(hp, 0, k);
      const double tol = c.dt == DType::kBFloat16 ? 2e-2 : c.dt == DType::kFloat16 ? 4e-3 : 1e-5;
      err = rel_err(hy.data(), ref.data(), size_t(k * c.n), c.dt);
      check = err <= tol ? "ok" : "FAIL " + fmtf("%.1e", err);
      failures += err <= tol ? 0 : 1;
    }
    const double bytes = 2.0 * double(e) * double(es);
    mmm::HadamardParams p1 = p;  // one CTA per row, for hadamard_1cta
    p1.split_rows = false;
    const bool pairs = std::string(mmm::hadamard_cuda_path(p, dev.id)) == "cluster x2";
    auto run_1cta = [&] { MMM_CHECK_LAUNCH(mmm::launch_hadamard(p1, ws.get(), stream), tag + " (1 CTA)"); };
    for (int variant = 0; variant < (pairs ? 2 : 1); ++variant) {
      const mmm::HadamardParams& pv = variant ? p1 : p;
      const Timing t = variant ? time_median(run_1cta, stream, &flusher, reps, 5) : time_median(run, stream, &flusher, reps, 5);
      const double gbps = bytes / (t.median_ms * 1e-3) / 1e9, pct = 100.0 * bytes / (t.median_ms * 1e-3) / copy_bps;
      const char* op = variant ? "hadamard_1cta" : "hadamard";
      const char* path = mmm::hadamard_cuda_path(pv, dev.id);
      const std::string chk = variant ? "-" : check;
      table.add({op, dtype_name(c.dt), std::to_string(c.n), std::to_string(rows), fmtf("%.1f", t.median_ms * 1e3),
                 fmtf("%.0f", gbps), fmtf("%.1f", pct), path, chk});
      JsonObject j;
      j.str("op", op).str("dtype", dtype_name(c.dt)).integer("n", c.n).integer("n_pow2", m)
          .integer("rows", rows).str("path", path).integer("workspace_bytes", (long long)wsb).num("bytes", bytes)
          .num("GBps", gbps).num("pct_copy_bw", pct).str("check", chk)
          .num("check_rel_err", variant ? NAN : err);
      add_timing(j, t);
      records.push_back(j);
    }
  }
  MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
  table.print();
  print_copy_bandwidth(copy_bps);
  return bd.finish(args.json_path, "hadamard", records, bd.env(reps), failures);
}
