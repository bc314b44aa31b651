// Standalone benchmark of mmm's block GEMM CUDA kernels (no torch), as block_diag_matmul and
// monarch_matmul run them (csrc/torch/block_diag_matmul.cpp):
//
//   fwd          y = block_diag_matmul(x, w):  block_diag_fwd                              1 GEMM
//   bwd          dx = block_diag_dx(dy, w);  dw = block_diag_dw(dy, x)                      2 GEMMs
//   monarch_fwd  u = block_diag_fwd(x, w1);  y = monarch_stage2_fwd(u, w2)                 2 GEMMs
//   monarch_bwd  u = block_diag_fwd(x, w1) (recomputed, not saved);  dw2 = stage2_dw(dy, u);
//                du = stage2_dx(dy, w2);  dx = block_diag_dx(du, w1);  dw1 = block_diag_dw(du, x)
//                                                                                          5 GEMMs
//   monarch_fused_fwd  y = monarch(x, w1, w2) by the fused kernel (monarch_fused.h): what
//                monarch_matmul runs when the plan takes the shape, timed wherever the shape
//                fits (the JSON's "planned": whether the plan's L2 rule keeps it); skipped (with
//                the plan's reason) where it does not fit                       1 kernel
//                (on sm_90, for the square shapes of blocks of 32 or 64, the cluster kernel that
//                holds the weights on chip: the JSON's fused_cluster > 0)
//   monarch_stream_fwd  where monarch_fused_fwd is the cluster kernel: the streaming fused
//                kernel on the same shape (what the clusters gain, side by side)  1 kernel
//   monarch_fused_fwd_u1  the streaming kernel at one GEMM (stage-1 unit, stage-2 block) per
//                pipeline step, where its plan groups 2 or 4 (what grouping gains)  1 kernel
// GEMMs whose output cannot fill the GPU (the dweights) get split-K as the op gives them
// (block_gemm_cuda_splits; workspace allocated here).
// Sweep: (features, nblocks) in {(1024, 32), (4096, 64), (8192, 64), (8192, 128)}, square blocks
// (w, w1: (nblocks, F/nblocks, F/nblocks); Monarch w2: (l = nblocks, F/nblocks, F/nblocks)),
// tokens = 16384, dtype in {bf16, fp16} (every operand in that dtype, fp32 accumulation).
// Flags: see --help; --tensor-cores 0 sets BlockGemm::simt_only (the fp32-FMA kernel).
//
// Method: inputs filled on the device by a hash-based kernel (untimed); before each timed run the
// L2 is flushed by a cudaMemsetAsync of a buffer of 4x the L2 size (queried); each run (all the
// GEMMs of the op, back to back on one stream) is bracketed by CUDA events; the first run is
// untimed (and checked), then 5 untimed warm-up runs and the median of 50 timed runs (--reps; 10
// with --quick). Without --reps, one extra run is timed alone first, and an op so slow that 50
// runs would take more than 1.2 s gets fewer (at least 10, and 1 warm-up; the count is in the
// table and the JSON): that keeps a full run under a minute on an H100.
//
// FLOP model ("useful" TFLOP/s): 2 * tokens * (weight elements) per GEMM the op needs:
//   fwd 2*T*|w|, bwd 4*T*|w|, monarch_fwd 2*T*(|w1|+|w2|), monarch_bwd 4*T*(|w1|+|w2|)
// (the monarch backward's recompute of u is extra work and is not counted).
// Byte model (X = tokens * features * s, W = weight bytes; GB/s = bytes / median time, decimal):
// every input read once, every output written once; intermediates (u, du) are not counted.
//   fwd          read x, w                write y            2X + W
//   bwd          read dy, x, w            write dx, dw       3X + 2W
//   monarch_fwd  read x, w1, w2           write y            2X + 2W   (monarch_fused_fwd too)
//   monarch_bwd  read dy, x, w1, w2       write dx, dw1, dw2 3X + 4W
// "%BW" = GB/s over the copy bandwidth measured here (cudaMemcpyAsync D2D of 1 GiB, read+write).
//
// Check: after the first run of each op, the GPU results are compared with the CPU twin
// (block_gemm_cpu) run on host copies: rows {0, 1, T/2+3, T-1} of y / dx (and of the Monarch
// intermediates u, du), computed on the CPU from the same rows of x / dy through the whole
// chain; and weight gradients dw / dw1 (blocks 0 and nblocks-1) and dw2 (blocks 0 and l-1) over
// all tokens, from the block's columns of the GPU's own inputs (x, dy, and the GPU u / du, whose
// rows are checked above) gathered into compact matrices. Error = max |gpu - cpu| / max |cpu|
// per output; it must be under 2e-2 (bf16) or 4e-3 (fp16). A failed check, like any CUDA or
// launcher error, makes the program exit with status 1 (after printing and writing the JSON).
#include <cstdio>
#include <string>
#include <vector>

#include "block_diag_matmul/monarch_fused.h"  // include dir: csrc/
#include "block_diag_matmul/params.h"
#include "bench_common.cuh"

using mmm::BlockGemm;
using mmm::DType;
using namespace mmm_bench;

namespace {

const char* kUsage =
    "usage: bench_block_diag_matmul [--json PATH] [--reps N] [--quick] [--tensor-cores 0|1]\n"
    "                               [--dtype bf16|fp16|all] [--cases F:NB,...] [--tokens T]\n"
    "                               [--no-check 1]\n"
    "  --json PATH         write the records as JSON to PATH (overwritten)\n"
    "  --reps N            timed runs per measurement (default 50, fewer for very slow ops;\n"
    "                      with --quick 10)\n"
    "  --quick             bf16 only, (features, nblocks) in {(1024, 32), (8192, 64)}, fewer runs\n"
    "  --tensor-cores 0|1  0: BlockGemm::simt_only (fp32-FMA kernel); default 1 (mma.sync)\n"
    "  --dtype D           bf16, fp16 or all (default all; bf16 with --quick)\n"
    "  --cases LIST        comma-separated features:nblocks pairs instead of the default sweep\n"
    "  --tokens T          rows of x (default 16384)\n"
    "  --no-check 1        skip the comparison with the CPU twin\n"
    "  env MMM_COMMIT is recorded in the JSON as the commit.\n";

constexpr double kMeasureBudgetMs = 1200;  // per (case, op) measurement, without --reps

struct Case {
  int64_t features, nb, tokens;
  DType dt;
};

[[noreturn]] void bad_arg(const std::string& what) {
  std::fprintf(stderr, "%s\n%s", what.c_str(), kUsage);
  std::exit(2);
}

std::vector<std::pair<int64_t, int64_t>> parse_cases(const std::string& s) {
  std::vector<std::pair<int64_t, int64_t>> v;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const std::string item = s.substr(i, j - i);
    const size_t colon = item.find(':');
    if (colon == std::string::npos) bad_arg("bad --cases item " + item + " (want features:nblocks)");
    const long long f = std::atoll(item.substr(0, colon).c_str());
    const long long nb = std::atoll(item.substr(colon + 1).c_str());
    if (f <= 0 || nb <= 0 || f % nb != 0)
      bad_arg("bad --cases item " + item + " (features must be a positive multiple of nblocks)");
    v.emplace_back(f, nb);
    i = j + 1;
  }
  if (v.empty()) bad_arg("empty --cases");
  return v;
}

// ---- host copies -----------------------------------------------------------------------------
std::vector<unsigned char> to_host(const void* dev, size_t bytes, cudaStream_t s) {
  std::vector<unsigned char> h(bytes);
  if (bytes) {
    MMM_CHECK_CUDA(cudaMemcpyAsync(h.data(), dev, bytes, cudaMemcpyDeviceToHost, s));
    MMM_CHECK_CUDA(cudaStreamSynchronize(s));
  }
  return h;
}

// Rows `idx` of a (rows, cols) contiguous device matrix, packed into a (idx.size(), cols) host one.
std::vector<unsigned char> gather_rows(const void* dev, int64_t cols, size_t es,
                                       const std::vector<int64_t>& idx, cudaStream_t s) {
  std::vector<unsigned char> h(idx.size() * cols * es);
  for (size_t r = 0; r < idx.size(); ++r)
    MMM_CHECK_CUDA(cudaMemcpyAsync(h.data() + r * cols * es,
                                   static_cast<const char*>(dev) + idx[r] * cols * es, cols * es,
                                   cudaMemcpyDeviceToHost, s));
  MMM_CHECK_CUDA(cudaStreamSynchronize(s));
  return h;
}

// dst[t * ncols + c] = src[t * rs + col0 + c * step]: a block's columns (step 1) or a Monarch
// stage-2 block's strided columns (step l), as a compact (rows, ncols) matrix. 2-byte elements.
__global__ void gather_cols_kernel(const uint16_t* src, int64_t rs, int64_t col0, int64_t step,
                                   int64_t ncols, int64_t rows, uint16_t* dst) {
  const int64_t n = rows * ncols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / ncols, c = e % ncols;
    dst[e] = src[t * rs + col0 + c * step];
  }
}

std::vector<unsigned char> gather_cols(const void* src, int64_t rs, int64_t col0, int64_t step,
                                       int64_t ncols, int64_t rows, DeviceBuffer& scratch,
                                       cudaStream_t s) {
  const size_t bytes = size_t(rows) * ncols * sizeof(uint16_t);
  scratch.resize(bytes);
  const unsigned blocks = unsigned(std::min<int64_t>(mmm::ceil_div(rows * ncols, 256), 65535));
  gather_cols_kernel<<<blocks, 256, 0, s>>>(static_cast<const uint16_t*>(src), rs, col0, step,
                                            ncols, rows, scratch.get<uint16_t>());
  MMM_CHECK_CUDA(cudaGetLastError());
  return to_host(scratch.get(), bytes, s);
}

// The CPU twin over a whole descriptor (single-threaded).
void cpu_gemm(const BlockGemm& g) { mmm::block_gemm_cpu(g, 0, mmm::block_gemm_cpu_tasks(g)); }

double rel_err(const std::vector<unsigned char>& a, const std::vector<unsigned char>& ref, DType t,
               size_t es) {
  if (a.size() != ref.size()) return INFINITY;
  return mmm_bench::rel_err(a.data(), ref.data(), a.size() / es, t);
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Args::parse(argc, argv, {"--tensor-cores", "--dtype", "--cases", "--tokens", "--no-check"},
                          kUsage);
  const std::string tc_arg = args.get("--tensor-cores", "1");
  if (tc_arg != "0" && tc_arg != "1") bad_arg("bad --tensor-cores " + tc_arg + " (want 0 or 1)");
  const bool tensor_cores = tc_arg == "1";
  const bool do_check = args.get("--no-check", "0") == "0";
  const std::string dtype_arg = args.get("--dtype", args.quick ? "bf16" : "all");
  std::vector<DType> dtypes;
  if (dtype_arg == "bf16") dtypes = {DType::kBFloat16};
  else if (dtype_arg == "fp16") dtypes = {DType::kFloat16};
  else if (dtype_arg == "all") dtypes = {DType::kBFloat16, DType::kFloat16};
  else bad_arg("bad --dtype " + dtype_arg);
  const long long tokens = std::atoll(args.get("--tokens", "16384").c_str());
  if (tokens <= 0) bad_arg("bad --tokens");
  const int default_reps = args.quick ? 10 : 50;
  std::vector<std::pair<int64_t, int64_t>> shapes =
      args.quick ? std::vector<std::pair<int64_t, int64_t>>{{1024, 32}, {8192, 64}}
                 : std::vector<std::pair<int64_t, int64_t>>{{1024, 32}, {4096, 64}, {8192, 64}, {8192, 128}};
  if (args.get("--cases", "") != "") shapes = parse_cases(args.get("--cases", ""));

  BenchDevice bd("bench_block_diag_matmul");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header(std::string("tensor cores ") + (tensor_cores ? "on" : "off (simt_only)") + " | tokens " +
                  std::to_string(tokens));

  std::vector<Case> cases;
  for (DType dt : dtypes)
    for (auto [f, nb] : shapes) cases.push_back({f, nb, tokens, dt});

  size_t max_act = 0, max_w = 0;  // elements
  for (auto& c : cases) {
    max_act = std::max<size_t>(max_act, size_t(c.tokens) * c.features);
    max_w = std::max<size_t>(max_w, size_t(c.features) * (c.features / c.nb));
  }
  const size_t es = 2;  // bf16 / fp16
  DeviceBuffer x(max_act * es), dy(max_act * es), y(max_act * es), dx(max_act * es),
      u(max_act * es), du(max_act * es);
  DeviceBuffer w1(max_w * es), w2(max_w * es), dw1(max_w * es), dw2(max_w * es), scratch, workspace;

  Table table({"features", "nblocks", "block", "tokens", "dtype", "op", "GEMMs", "time us",
               "TFLOP/s", "GB/s", "% copy BW", "reps", "check"});
  std::vector<JsonObject> records;
  int failures = 0;
  uint64_t seed = 1;

  for (const Case& c : cases) {
    // block_diag: w (nb, n, k), n = k = F/nb. Monarch: w1 (nb, q, p), w2 (l, s, r) with
    // p = q = F/nb, l = nb, r = nb*q/l = q, s = F/l: square blocks, features in = out = F.
    const int64_t F = c.features, nb = c.nb, bsz = F / nb, T = c.tokens;
    const int64_t p = bsz, q = bsz, l = nb, r = nb * q / l, s = F / l, kq = nb * q;
    const DType dt = c.dt;
    const int64_t w_elems = nb * bsz * bsz;  // = |w1| = |w2|
    const float wa = 1.f / std::sqrt(float(bsz));  // keeps y, u of order 1
    fill_random(x.get(), size_t(T) * F, dt, seed++, -1.f, 1.f, stream);
    fill_random(dy.get(), size_t(T) * F, dt, seed++, -1.f, 1.f, stream);
    fill_random(w1.get(), w_elems, dt, seed++, -wa, wa, stream);
    fill_random(w2.get(), w_elems, dt, seed++, -wa, wa, stream);

    // The GEMM sequences, exactly as csrc/torch/block_diag_matmul.cpp runs them.
    const BlockGemm g_fwd = mmm::block_diag_fwd(x.get(), F, w1.get(), y.get(), F, T, nb, bsz, bsz, dt);
    const BlockGemm g_dx = mmm::block_diag_dx(dy.get(), F, w1.get(), dx.get(), F, T, nb, bsz, bsz, dt);
    const BlockGemm g_dw = mmm::block_diag_dw(dy.get(), F, x.get(), F, dw1.get(), T, nb, bsz, bsz, dt);
    const BlockGemm g_s1 = mmm::block_diag_fwd(x.get(), F, w1.get(), u.get(), kq, T, nb, q, p, dt);
    const BlockGemm g_s2 = mmm::monarch_stage2_fwd(u.get(), kq, w2.get(), y.get(), l * s, T, l, s, r, dt);
    const BlockGemm g_s2dw = mmm::monarch_stage2_dw(dy.get(), l * s, u.get(), kq, dw2.get(), T, l, s, r, dt);
    const BlockGemm g_s2dx = mmm::monarch_stage2_dx(dy.get(), l * s, w2.get(), du.get(), kq, T, l, s, r, dt);
    const BlockGemm g_s1dx = mmm::block_diag_dx(du.get(), kq, w1.get(), dx.get(), nb * p, T, nb, q, p, dt);
    const BlockGemm g_s1dw = mmm::block_diag_dw(du.get(), kq, x.get(), nb * p, dw1.get(), T, nb, q, p, dt);

    const std::string tag = std::string(dtype_name(dt)) + " F=" + std::to_string(F) + " nb=" +
                            std::to_string(nb);
    struct Op {
      const char* name;
      std::vector<BlockGemm> gemms;
      double flops, bytes;
      const mmm::MonarchFusedPlan* fused = nullptr;  // the fused Monarch kernel instead of `gemms`
    };
    mmm::MonarchFused mf;
    mf.tokens = T, mf.k = nb, mf.q = q, mf.p = p, mf.l = l, mf.s = s, mf.r = r;
    mf.x = x.get(), mf.x_rs = F, mf.w1 = w1.get(), mf.w2 = w2.get(), mf.y = y.get(), mf.y_rs = l * s;
    mf.dtype = dt;
    int device = 0;
    MMM_CHECK_CUDA(cudaGetDevice(&device));
    const int64_t smem_limit = mmm::monarch_fused_smem_limit(device);
    // Timed wherever the shape fits (knobs.always): whether the plan's L2 rule would take it is
    // the JSON's "planned" field.
    const bool clusters = mmm::monarch_fused_clusters(device);
    mmm::MonarchFusedKnobs knobs;
    knobs.always = true;
    const mmm::MonarchFusedPlan plan = mmm::plan_monarch_fused(mf, smem_limit, true, knobs, clusters);
    const bool planned = mmm::plan_monarch_fused(mf, smem_limit, true, {}, clusters).fused;
    knobs.no_cluster = true;
    const mmm::MonarchFusedPlan streaming = mmm::plan_monarch_fused(mf, smem_limit, true, knobs);
    knobs.chunk = streaming.chunk, knobs.bt = streaming.bt, knobs.units = 1;
    const mmm::MonarchFusedPlan plan_u1 = mmm::plan_monarch_fused(mf, smem_limit, true, knobs);
    const double X = double(T) * F * es, W = double(w_elems) * es, fl = 2.0 * double(T) * w_elems;
    std::vector<Op> ops = {
        {"fwd", {g_fwd}, fl, 2 * X + W},
        {"bwd", {g_dx, g_dw}, 2 * fl, 3 * X + 2 * W},
        {"monarch_fwd", {g_s1, g_s2}, 2 * fl, 2 * X + 2 * W},
        {"monarch_bwd", {g_s1, g_s2dw, g_s2dx, g_s1dx, g_s1dw}, 4 * fl, 3 * X + 4 * W},
    };
    if (tensor_cores && plan.fused) {
      ops.push_back({"monarch_fused_fwd", {}, 2 * fl, 2 * X + 2 * W, &plan});
      if (plan.cluster > 0 && streaming.fused) ops.push_back({"monarch_stream_fwd", {}, 2 * fl, 2 * X + 2 * W, &streaming});
      if (streaming.fused && plan_u1.fused && (streaming.units > 1 || streaming.blocks > 1))
        ops.push_back({"monarch_fused_fwd_u1", {}, 2 * fl, 2 * X + 2 * W, &plan_u1});
    } else
      std::printf("%s: monarch_fused_fwd skipped: %s\n", tag.c_str(),
                  tensor_cores ? plan.why : "tensor cores off");
    size_t ws_bytes = 0;
    for (Op& op : ops)
      for (BlockGemm& g : op.gemms) {
        g.simt_only = !tensor_cores;
        g.splits = mmm::block_gemm_cuda_splits(g);
        ws_bytes = std::max<size_t>(ws_bytes, size_t(g.splits) * g.batch * g.m * g.n * sizeof(float));
      }
    workspace.resize(ws_bytes);  // one workspace: an op's GEMMs run in order on one stream
    for (Op& op : ops)
      for (BlockGemm& g : op.gemms) g.workspace = g.splits > 1 ? workspace.get<float>() : nullptr;

    // Rows checked, and the host inputs shared by the checks.
    std::vector<int64_t> idx = {0, std::min<int64_t>(1, T - 1), std::min<int64_t>(T / 2 + 3, T - 1), T - 1};
    const int64_t kr = int64_t(idx.size());
    std::vector<unsigned char> hx, hdy, hw1, hw2;
    if (do_check) {
      hx = gather_rows(x.get(), F, es, idx, stream);
      hdy = gather_rows(dy.get(), F, es, idx, stream);
      hw1 = to_host(w1.get(), w_elems * es, stream);
      hw2 = to_host(w2.get(), w_elems * es, stream);
    }
    const std::vector<int64_t> w1_blocks = {0, nb - 1}, w2_blocks = {0, l - 1};

    // dw-style check: block `b` of a weight gradient on the GPU vs the CPU twin over all tokens.
    // The CPU reference runs on the block's inputs gathered (on the device) into compact matrices.
    auto block_err = [&](const void* grad, int64_t b, int64_t rows_out, int64_t cols_out,
                         const void* dsrc, int64_t drs, int64_t dcol0, int64_t dstep,
                         const void* xsrc, int64_t xrs, int64_t xcol0, int64_t xstep) {
      // grad[b][i][j] = sum_t d[t][i] * xx[t][j], d: (T, rows_out), xx: (T, cols_out) compact.
      auto hd = gather_cols(dsrc, drs, dcol0, dstep, rows_out, T, scratch, stream);
      auto hxx = gather_cols(xsrc, xrs, xcol0, xstep, cols_out, T, scratch, stream);
      std::vector<unsigned char> ref(size_t(rows_out) * cols_out * es);
      cpu_gemm(mmm::block_diag_dw(hd.data(), rows_out, hxx.data(), cols_out, ref.data(), T, 1, rows_out,
                                  cols_out, dt));
      auto got = to_host(static_cast<const char*>(grad) + size_t(b) * rows_out * cols_out * es,
                         ref.size(), stream);
      return rel_err(got, ref, dt, es);
    };

    // Compare the GPU results of op `name` (just run) with the CPU twin; max error over outputs.
    auto check = [&](const std::string& name) -> double {
      double err = 0;
      auto upd = [&](double e) { err = std::isnan(e) ? INFINITY : std::max(err, e); };
      std::vector<unsigned char> ref_a(size_t(kr) * F * es), ref_b(size_t(kr) * F * es);
      if (name == "fwd") {
        cpu_gemm(mmm::block_diag_fwd(hx.data(), F, hw1.data(), ref_a.data(), F, kr, nb, bsz, bsz, dt));
        upd(rel_err(gather_rows(y.get(), F, es, idx, stream), ref_a, dt, es));
      } else if (name == "bwd") {
        cpu_gemm(mmm::block_diag_dx(hdy.data(), F, hw1.data(), ref_a.data(), F, kr, nb, bsz, bsz, dt));
        upd(rel_err(gather_rows(dx.get(), F, es, idx, stream), ref_a, dt, es));
        for (int64_t b : w1_blocks)  // dw[b][i][c] = sum_t dy[t, b*n + i] * x[t, b*k + c]
          upd(block_err(dw1.get(), b, bsz, bsz, dy.get(), F, b * bsz, 1, x.get(), F, b * bsz, 1));
      } else if (name == "monarch_fused_fwd" || name == "monarch_stream_fwd" || name == "monarch_fused_fwd_u1") {
        cpu_gemm(mmm::block_diag_fwd(hx.data(), F, hw1.data(), ref_a.data(), kq, kr, nb, q, p, dt));
        cpu_gemm(mmm::monarch_stage2_fwd(ref_a.data(), kq, hw2.data(), ref_b.data(), l * s, kr, l, s, r, dt));
        upd(rel_err(gather_rows(y.get(), l * s, es, idx, stream), ref_b, dt, es));
      } else if (name == "monarch_fwd") {
        cpu_gemm(mmm::block_diag_fwd(hx.data(), F, hw1.data(), ref_a.data(), kq, kr, nb, q, p, dt));
        cpu_gemm(mmm::monarch_stage2_fwd(ref_a.data(), kq, hw2.data(), ref_b.data(), l * s, kr, l, s, r, dt));
        upd(rel_err(gather_rows(u.get(), kq, es, idx, stream), ref_a, dt, es));
        upd(rel_err(gather_rows(y.get(), l * s, es, idx, stream), ref_b, dt, es));
      } else if (name == "monarch_bwd") {
        // u (recomputed), du and dx on rows; dw2 and dw1 on two blocks each over all tokens.
        cpu_gemm(mmm::block_diag_fwd(hx.data(), F, hw1.data(), ref_a.data(), kq, kr, nb, q, p, dt));
        upd(rel_err(gather_rows(u.get(), kq, es, idx, stream), ref_a, dt, es));
        cpu_gemm(mmm::monarch_stage2_dx(hdy.data(), l * s, hw2.data(), ref_a.data(), kq, kr, l, s, r, dt));
        upd(rel_err(gather_rows(du.get(), kq, es, idx, stream), ref_a, dt, es));
        cpu_gemm(mmm::block_diag_dx(ref_a.data(), kq, hw1.data(), ref_b.data(), nb * p, kr, nb, q, p, dt));
        upd(rel_err(gather_rows(dx.get(), nb * p, es, idx, stream), ref_b, dt, es));
        for (int64_t j : w2_blocks)  // dw2[j][t'][i] = sum_t dy[t, t'*l + j] * u[t, i*l + j]
          upd(block_err(dw2.get(), j, s, r, dy.get(), l * s, j, l, u.get(), kq, j, l));
        for (int64_t b : w1_blocks)  // dw1[b][i][c] = sum_t du[t, b*q + i] * x[t, b*p + c]
          upd(block_err(dw1.get(), b, q, p, du.get(), kq, b * q, 1, x.get(), nb * p, b * p, 1));
      }
      return err;
    };

    for (const Op& op : ops) {
      const std::string what = std::string(op.name) + " " + tag;
      auto run = [&] {
        if (op.fused) MMM_CHECK_LAUNCH(mmm::launch_monarch_fused(mf, *op.fused, stream), what);
        for (const BlockGemm& g : op.gemms) MMM_CHECK_LAUNCH(mmm::launch_block_gemm(g, stream), what);
      };
      // First run (untimed) checked against the CPU twin; a second one, timed alone, sizes the
      // repetitions (the first may include lazy module loading).
      run();
      MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
      std::string check_str = "-";
      double err = NAN;
      if (do_check) {
        err = check(op.name);
        const double tol = dt == DType::kBFloat16 ? 2e-2 : 4e-3;
        const bool ok = err <= tol;
        check_str = ok ? "ok " + fmtf("%.0e", err) : "FAIL " + fmtf("%.1e", err);
        failures += ok ? 0 : 1;
      }

      int reps = args.reps, warmup = 5;
      float est_ms = 0;
      if (reps <= 0) {
        cudaEvent_t e0, e1;
        MMM_CHECK_CUDA(cudaEventCreate(&e0));
        MMM_CHECK_CUDA(cudaEventCreate(&e1));
        flusher.flush(stream);
        MMM_CHECK_CUDA(cudaEventRecord(e0, stream));
        run();
        MMM_CHECK_CUDA(cudaEventRecord(e1, stream));
        MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
        MMM_CHECK_CUDA(cudaEventElapsedTime(&est_ms, e0, e1));
        MMM_CHECK_CUDA(cudaEventDestroy(e0));
        MMM_CHECK_CUDA(cudaEventDestroy(e1));
        const double est = std::max<double>(est_ms, 1e-3);
        reps = int(std::clamp<double>(kMeasureBudgetMs / est, 10, default_reps));
        if (est * (reps + warmup) > kMeasureBudgetMs) warmup = 1;
      }
      const Timing t = time_median(run, stream, &flusher, reps, warmup);
      const double sec = t.median_ms * 1e-3;
      const double tflops = op.flops / sec / 1e12, gbps = op.bytes / sec / 1e9;
      const double pct = 100.0 * op.bytes / sec / copy_bps;
      table.add({std::to_string(F), std::to_string(nb), std::to_string(bsz), std::to_string(T),
                 dtype_name(dt), op.name, op.fused ? std::string(op.fused->cluster ? "cluster" : "fused") : std::to_string(op.gemms.size()),
                 fmtf("%.1f", t.median_ms * 1e3), fmtf("%.1f", tflops), fmtf("%.0f", gbps),
                 fmtf("%.1f", pct), std::to_string(t.reps), check_str});
      JsonObject j;
      j.integer("features", F).integer("nblocks", nb).integer("block", bsz).integer("tokens", T)
          .str("dtype", dtype_name(dt)).str("op", op.name).boolean("tensor_cores", tensor_cores)
          .integer("gemms", (long long)op.gemms.size()).boolean("fused", op.fused != nullptr)
          .boolean("planned", op.fused != nullptr && planned)
          .integer("fused_tokens_per_cta", op.fused ? op.fused->bt : 0)
          .integer("fused_chunk", op.fused ? op.fused->chunk : 0)
          .integer("fused_units_per_step", op.fused ? op.fused->units : 0)
          .integer("fused_blocks_per_step", op.fused ? op.fused->blocks : 0)
          .integer("fused_cluster", op.fused ? op.fused->cluster : 0)
          .num("useful_flops", op.flops)
          .num("bytes", op.bytes)
          .num("TFLOPs", tflops).num("GBps", gbps).num("pct_copy_bw", pct).str("check", check_str)
          .num("check_rel_err", err);
      add_timing(j, t);
      records.push_back(j);
    }
  }
  MMM_CHECK_CUDA(cudaStreamSynchronize(stream));

  table.print();
  std::printf("copy bandwidth %.0f GB/s (cudaMemcpyAsync D2D 1 GiB, read+write). TFLOP/s: useful "
              "2*tokens*|w| per needed GEMM (monarch_bwd's recompute of u not counted). GB/s: read "
              "inputs (x or dy, x, weights) once + write outputs (y or dx, weight grads) once; "
              "intermediates u, du not counted.\n", copy_bps / 1e9);
  JsonObject extra = bd.env(args.reps > 0 ? args.reps : default_reps);
  extra.boolean("tensor_cores", tensor_cores).integer("tokens", tokens)
      .str("flop_model", "useful: 2*tokens*weight elements per needed GEMM; recompute not counted")
      .str("byte_model", "inputs read once + outputs written once; intermediates not counted");
  return bd.finish(args.json_path, "block_diag_matmul", records, extra, failures);
}
