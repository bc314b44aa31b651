// Standalone benchmark of mmm's butterfly_multiply CUDA kernels (no torch): forward and backward.
//
//   y = B x along rows of a dense (rows, n) matrix, B the product of nblocks * log2(n) learnable
//   butterfly factors (torch_butterfly's butterfly_multiply; csrc/butterfly/params.h has the math),
//   one stack, increasing stride. Backward: dx and dtwiddle (a sum over the rows) from dy.
//
// Sweep: bf16 and fp32 at n in {256, 1024, 4096, 16384, 65536} with nblocks = 1; bf16 at n = 4096
// with nblocks = 2; complex64 at n in {1024, 4096}. Twiddles are fp32 for bf16 and fp32 x (as mmm's
// Python benchmark passes them), complex64 for complex64 x. rows such that x is ~64 MB (--quick:
// 16 MB, bf16 only, n in {256, 4096, 65536} and the nblocks = 2 case). A row that fits one CTA's
// shared memory (forward: n * 4 B, backward: 3 * n * 4 B; complex 8 B) takes one pass; longer rows
// split every block into passes through the workspace butterfly_cuda_workspace_bytes asks for
// (allocated here). On an H100 (227 KB per block) n = 16384 still fits in both directions (on an
// A100's 163 KB its backward takes two passes); n = 65536 takes two passes forward and backward on
// every current GPU. The "passes" column (passes per block) mirrors butterfly_launch.cu's plan:
// a label only. Flags: see --help.
//
// Method: inputs filled on the device by a hash-based kernel (untimed): x and dy uniform in
// [-1, 1), real twiddles uniform with variance 1/2 (complex: each part variance 1/4), so every
// factor keeps the variance of the row; before each timed run the L2 is flushed by a
// cudaMemsetAsync of 4x the L2 size; each run is bracketed by CUDA events on one stream; median
// of --reps runs (default 50) after 5 untimed warm-up runs. The backward is the backward alone
// (butterfly_multiply_backward: it recomputes what it needs from x; no saved activations).
//
// Byte model (E = rows * n, s = bytes per element of x, T = twiddle bytes = nblocks * log2(n) *
// n/2 * 4 entries of fp32 (complex64: 8 B); GB/s = bytes / median time, decimal):
//   fwd  read x, read twiddle, write y                                   2 * E * s + T
//   bwd  read dy, read x, read twiddle, write dx, write dtwiddle          3 * E * s + 2 * T
// The multi-pass workspace (forward: one fp32 copy of the rows per pass boundary; backward: the
// per-pass checkpoints and gradient), the backward's dtwiddle partial slots and its recomputation
// are not counted, so they show as lower GB/s. "%BW" = GB/s over the copy bandwidth measured here
// (cudaMemcpyAsync D2D of 1 GiB, read + write).
//
// Check (against the CPU twins butterfly_forward_cpu / butterfly_backward_cpu, fp32 math on the
// host, run serially): after the first forward and backward of each case, y and dx of rows
// {0, 1, rows-1} (the twins run on host copies of those rows); then a small backward of the same
// shape with rows = max(8, 2^19 / n) + 3 (a ragged last tile) is run on the GPU and the host and
// all of dx and dtwiddle are compared. err = max |gpu - cpu| / max |cpu| (complex: over the real
// and imaginary parts) must be under 2e-2 (bf16: one output rounding apart) or 1e-5 (fp32,
// complex64: the GPU's fused multiply-adds round differently). "bwd" reports the worst of its
// three comparisons. A failed check, like any CUDA or launcher error, makes the program exit with
// status 1.
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "butterfly/params.h"  // include dir: csrc/
#include "bench_common.cuh"

using mmm::DType;
using namespace mmm_bench;

namespace {

const char* kUsage =
    "usage: bench_butterfly [--json PATH] [--reps N] [--quick] [--n N1,N2,...] [--no-check 1]\n"
    "  --json PATH   write the records as JSON to PATH (overwritten)\n"
    "  --reps N      timed runs per measurement (default 50; with --quick 10)\n"
    "  --quick       bf16 only, n in {256, 4096, 65536} (+ nblocks = 2 at 4096), 16 MB inputs\n"
    "  --n LIST      comma-separated powers of two (2 .. 1048576) instead of the default n: bf16\n"
    "                and fp32 at each (nblocks = 2 at 4096 and complex64 at 1024, 4096 if listed)\n"
    "  --no-check 1  skip the comparison with the CPU twins\n"
    "  env MMM_COMMIT is recorded in the JSON as the commit.\n";

struct Case {
  DType dt;
  int64_t n, nblocks;
};

const char* name_of(DType t) { return t == DType::kComplex64 ? "c64" : dtype_name(t); }
DType tw_dtype_for(DType x) { return x == DType::kComplex64 ? DType::kComplex64 : DType::kFloat32; }

int ilog2(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

// count elements of dtype t, complex as pairs of fp32 (bench_common's helpers know real types only).
void fill(void* p, size_t count, DType t, uint64_t seed, float a, cudaStream_t s) {
  if (t == DType::kComplex64) fill_random(p, 2 * count, DType::kFloat32, seed, -a, a, s);
  else fill_random(p, count, t, seed, -a, a, s);
}
double err_of(const void* got, const void* ref, size_t count, DType t) {
  return t == DType::kComplex64 ? rel_err(got, ref, 2 * count, DType::kFloat32) : rel_err(got, ref, count, t);
}

// butterfly_launch.cu's pass plan (max_bits, plan): passes per block of log_n factors when `bufs`
// (n)-element fp32 / complex64 buffers must fit one CTA. For the table only.
int passes_per_block(int64_t log_n, int64_t optin, int bufs, int64_t esz) {
  int k = 1;
  while (k < 30 && bufs * (((int64_t(1) << (k + 1)) + 31) / 32 * 32) * esz <= optin) ++k;
  return log_n <= k ? 1 : int((log_n + k - 1) / k);
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Args::parse(argc, argv, {"--n", "--no-check"}, kUsage);
  const bool do_check = args.get("--no-check", "0") == "0";
  const int reps = args.reps > 0 ? args.reps : (args.quick ? 10 : 50);
  std::vector<int64_t> ns = args.quick ? std::vector<int64_t>{256, 4096, 65536}
                                       : std::vector<int64_t>{256, 1024, 4096, 16384, 65536};
  if (args.get("--n", "") != "")
    ns = parse_list(args.get("--n", ""), "--n", [](long long x) { return x >= 2 && x <= (1 << 20) && !(x & (x - 1)); },
                    " (powers of two, 2 .. 1048576)");
  auto listed = [&](int64_t n) { return std::find(ns.begin(), ns.end(), n) != ns.end(); };
  std::vector<Case> cases;
  for (int64_t n : ns) cases.push_back({DType::kBFloat16, n, 1});
  if (listed(4096)) cases.push_back({DType::kBFloat16, 4096, 2});
  if (!args.quick) {
    for (int64_t n : ns) cases.push_back({DType::kFloat32, n, 1});
    for (int64_t n : {1024, 4096})
      if (listed(n)) cases.push_back({DType::kComplex64, n, 1});
  }
  const int64_t x_bytes = int64_t(args.quick ? 16 : 64) << 20;

  BenchDevice bd("bench_butterfly");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header();

  const mmm::CpuParallelFor serial = [](int64_t b, int64_t e, int64_t,
                                        const std::function<void(int64_t, int64_t)>& fn) {
    if (b < e) fn(b, e);
  };
  Table table({"dtype", "n", "nblocks", "rows", "op", "passes", "time us", "GB/s", "% copy BW", "check"});
  std::vector<JsonObject> records;
  int failures = 0;
  uint64_t seed = 1;
  // Grown to the largest case (buffers keep their size); the workspace to the largest request.
  DeviceBuffer x, y, dy, dx, tw, dtw, ws;

  for (const Case& c : cases) {
    const DType twt = tw_dtype_for(c.dt);
    const int64_t s = mmm::elem_bytes(c.dt), log_n = ilog2(c.n);
    const int64_t rows = std::max<int64_t>(1, x_bytes / (c.n * s));
    const size_t E = size_t(rows * c.n), xb = E * size_t(s);
    const size_t tw_count = size_t(c.nblocks * log_n * (c.n / 2) * 4);  // (1, nblocks, log_n, n/2, 2, 2)
    const size_t twb = tw_count * size_t(mmm::elem_bytes(twt));
    x.resize(xb); y.resize(xb); dy.resize(xb); dx.resize(xb); tw.resize(twb); dtw.resize(twb);
    const float tw_amp = c.dt == DType::kComplex64 ? std::sqrt(0.75f) : std::sqrt(1.5f);  // variance 1/4, 1/2
    fill(x.get(), E, c.dt, seed++, 1.f, stream);
    fill(dy.get(), E, c.dt, seed++, 1.f, stream);
    fill(tw.get(), tw_count, twt, seed++, tw_amp, stream);

    mmm::ButterflyParams p;
    p.batch = rows;
    p.nstacks = 1;
    p.nblocks = c.nblocks;
    p.log_n = log_n;
    p.n = c.n;
    p.n_in = c.n;
    p.increasing_stride = true;
    p.x = x.get(); p.x_row_stride = c.n; p.x_dtype = c.dt;
    p.twiddle = tw.get(); p.tw_dtype = twt;  // cudaMalloc'd: aligned for the kernels' vector loads
    p.y = y.get();
    p.dy = dy.get(); p.dy_row_stride = c.n;
    p.dx = dx.get();
    p.dtwiddle = dtw.get();
    const size_t ws_fwd = mmm::butterfly_cuda_workspace_bytes(p, false, dev.id);
    const size_t ws_bwd = mmm::butterfly_cuda_workspace_bytes(p, true, dev.id);
    ws.resize(std::max<size_t>({ws_fwd, ws_bwd, 16}));
    const std::string tag = std::string(name_of(c.dt)) + " n=" + std::to_string(c.n) + " nblocks=" +
                            std::to_string(c.nblocks);
    auto fwd = [&] { MMM_CHECK_LAUNCH(mmm::launch_butterfly_forward(p, ws.get(), stream), "fwd " + tag); };
    auto bwd = [&] { MMM_CHECK_LAUNCH(mmm::launch_butterfly_backward(p, ws.get(), stream), "bwd " + tag); };
    fwd();
    bwd();
    MMM_CHECK_CUDA(cudaStreamSynchronize(stream));

    std::string check_fwd = "-", check_bwd = "-";
    double err_fwd = NAN, err_bwd = NAN;
    if (do_check) {
      const double tol = c.dt == DType::kBFloat16 ? 2e-2 : 1e-5;
      const auto htw = to_host(tw.get(), twb);
      std::vector<unsigned char> tw_scratch(twb);
      // 1. y and dx of rows {0, 1, rows-1} of the timed case.
      const std::vector<int64_t> idx = {0, std::min<int64_t>(1, rows - 1), rows - 1};
      const int64_t k = int64_t(idx.size());
      const size_t row_b = size_t(c.n * s);
      std::vector<unsigned char> hx(k * row_b), hdy(k * row_b), gy(k * row_b), gdx(k * row_b), ry(k * row_b),
          rdx(k * row_b);
      for (int64_t i = 0; i < k; ++i) {
        const size_t off = size_t(idx[i]) * row_b;
        MMM_CHECK_CUDA(cudaMemcpy(hx.data() + i * row_b, x.get<unsigned char>() + off, row_b, cudaMemcpyDeviceToHost));
        MMM_CHECK_CUDA(cudaMemcpy(hdy.data() + i * row_b, dy.get<unsigned char>() + off, row_b, cudaMemcpyDeviceToHost));
        MMM_CHECK_CUDA(cudaMemcpy(gy.data() + i * row_b, y.get<unsigned char>() + off, row_b, cudaMemcpyDeviceToHost));
        MMM_CHECK_CUDA(cudaMemcpy(gdx.data() + i * row_b, dx.get<unsigned char>() + off, row_b, cudaMemcpyDeviceToHost));
      }
      mmm::ButterflyParams hp = p;
      hp.batch = k;
      hp.x = hx.data(); hp.twiddle = htw.data(); hp.y = ry.data();
      hp.dy = hdy.data(); hp.dx = rdx.data(); hp.dtwiddle = tw_scratch.data();  // dtwiddle of 3 rows: unused
      mmm::butterfly_forward_cpu(hp, serial);
      mmm::butterfly_backward_cpu(hp, serial);
      err_fwd = err_of(gy.data(), ry.data(), size_t(k * c.n), c.dt);
      const double err_dx_rows = err_of(gdx.data(), rdx.data(), size_t(k * c.n), c.dt);

      // 2. A small backward of the same shape: all of dx and dtwiddle.
      const int64_t sr = std::max<int64_t>(8, (int64_t(1) << 19) / c.n) + 3;
      const size_t se = size_t(sr * c.n), sb = se * size_t(s);
      DeviceBuffer sx(sb), sdy(sb), sdx(sb), sdtw(twb);
      fill(sx.get(), se, c.dt, seed++, 1.f, stream);
      fill(sdy.get(), se, c.dt, seed++, 1.f, stream);
      mmm::ButterflyParams sp = p;
      sp.batch = sr;
      sp.x = sx.get(); sp.dy = sdy.get(); sp.dx = sdx.get(); sp.dtwiddle = sdtw.get();
      sp.y = nullptr;  // backward only
      ws.resize(std::max<size_t>(mmm::butterfly_cuda_workspace_bytes(sp, true, dev.id), 16));
      MMM_CHECK_LAUNCH(mmm::launch_butterfly_backward(sp, ws.get(), stream), "small bwd " + tag);
      MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
      const auto hsx = to_host(sx.get(), sb), hsdy = to_host(sdy.get(), sb);
      const auto gsdx = to_host(sdx.get(), sb), gsdtw = to_host(sdtw.get(), twb);
      std::vector<unsigned char> rsdx(sb), rsdtw(twb);
      mmm::ButterflyParams hs = sp;
      hs.x = hsx.data(); hs.twiddle = htw.data(); hs.dy = hsdy.data(); hs.dx = rsdx.data(); hs.dtwiddle = rsdtw.data();
      mmm::butterfly_backward_cpu(hs, serial);
      const double err_sdx = err_of(gsdx.data(), rsdx.data(), se, c.dt);
      const double err_sdtw = err_of(gsdtw.data(), rsdtw.data(), tw_count, twt);
      // NaN-safe max: err_of returns inf (not NaN) on a non-finite value.
      err_bwd = std::max({err_dx_rows, err_sdx, err_sdtw});

      check_fwd = err_fwd <= tol ? "ok" : "FAIL " + fmtf("%.1e", err_fwd);
      check_bwd = err_bwd <= tol ? "ok"
                                 : "FAIL " + fmtf("%.1e", err_bwd) + " (dx rows " + fmtf("%.1e", err_dx_rows) +
                                       ", small dx " + fmtf("%.1e", err_sdx) + ", dtwiddle " +
                                       fmtf("%.1e", err_sdtw) + ")";
      failures += (err_fwd <= tol ? 0 : 1) + (err_bwd <= tol ? 0 : 1);
    }

    const Timing tf = time_median(fwd, stream, &flusher, reps, 5);
    const Timing tb = time_median(bwd, stream, &flusher, reps, 5);
    const int64_t esz = c.dt == DType::kComplex64 ? 8 : 4;  // the kernels' on-chip value
    const int pf = passes_per_block(log_n, optin, 1, esz), pb = passes_per_block(log_n, optin, 3, esz);
    const double e = double(E), sd = double(s), T = double(twb);
    struct Row { const char* op; const Timing& t; double bytes; int passes; size_t ws_bytes; const std::string& check;
                 double err; };
    const Row out[] = {{"fwd", tf, 2 * e * sd + T, pf, ws_fwd, check_fwd, err_fwd},
                       {"bwd", tb, 3 * e * sd + 2 * T, pb, ws_bwd, check_bwd, err_bwd}};
    for (const Row& r : out) {
      const double gbps = r.bytes / (r.t.median_ms * 1e-3) / 1e9;
      const double pct = 100.0 * r.bytes / (r.t.median_ms * 1e-3) / copy_bps;
      table.add({name_of(c.dt), std::to_string(c.n), std::to_string(c.nblocks), std::to_string(rows), r.op,
                 std::to_string(r.passes), fmtf("%.1f", r.t.median_ms * 1e3), fmtf("%.0f", gbps), fmtf("%.1f", pct),
                 r.check});
      JsonObject j;
      j.str("op", r.op).str("dtype", name_of(c.dt)).str("tw_dtype", name_of(twt)).integer("n", c.n)
          .integer("nblocks", c.nblocks).integer("nstacks", 1).boolean("increasing_stride", true).integer("rows", rows)
          .integer("passes_per_block", r.passes).integer("workspace_bytes", (long long)r.ws_bytes).num("bytes", r.bytes)
          .num("GBps", gbps).num("pct_copy_bw", pct).str("check", r.check)
          .num("check_rel_err", r.err);
      add_timing(j, r.t);
      records.push_back(j);
    }
  }
  MMM_CHECK_CUDA(cudaStreamSynchronize(stream));

  table.print();
  print_copy_bandwidth(copy_bps);
  return bd.finish(args.json_path, "butterfly", records, bd.env(reps), failures);
}
