// Benchmark of the fused_attention CUDA kernels through the torch-free API
// (csrc/attention/params.h): forward and backward TFLOP/s with FlashAttention's FLOP count
// (forward 4·B·H·Sq·Sk·D, halved for causal; backward 2.5x the forward), sequence lengths
// 512..16k at 16k tokens per batch, head dims 64 and 128, causal off and on, fp16 and bf16.
// The backward in both modes: "bwd" is the default one (deterministic = false: the atomic-dQ
// kernel at head dims up to 128 where the GPU's shared memory allows, else the same as "det"),
// "det" the bitwise reproducible one.
// Before timing, a small case (odd lengths, GQA, a window) is checked against the CPU twin, the
// backward in both modes.
// Head dims without a kernel in this build (CMake MMM_ATTENTION_HEAD_DIMS) are skipped, saying so.
//
//   bench_attention [--quick] [--reps N] [--json PATH]
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "attention/params.h"
#include "bench_common.cuh"

using namespace mmm_bench;

namespace {

struct Shape {
  int64_t b, hq, hkv, sq, sk, d;
  bool causal;
  int64_t wl = -1, wr = -1;
};

mmm::AttentionStrides contiguous(const Shape& s, int64_t heads, int64_t seq) {
  return {heads * seq * s.d, seq * s.d, s.d};
}

struct Problem {
  Shape s;
  mmm::DType dt;
  bool deterministic = false;
  DeviceBuffer q, k, v, o, lse, dout, dq, dk, dv, ws;
  mmm::AttentionFwdParams fwd() const {
    mmm::AttentionFwdParams p;
    p.batch = s.b; p.heads_q = s.hq; p.heads_kv = s.hkv; p.seqlen_q = s.sq; p.seqlen_k = s.sk; p.head_dim = s.d;
    p.q = q.get(); p.q_s = contiguous(s, s.hq, s.sq);
    p.k = k.get(); p.k_s = contiguous(s, s.hkv, s.sk);
    p.v = v.get(); p.v_s = contiguous(s, s.hkv, s.sk);
    p.out = o.get(); p.o_s = contiguous(s, s.hq, s.sq);
    p.lse = lse.get<float>();
    p.dtype = dt;
    p.scale = float(1.0 / std::sqrt(double(s.d)));
    p.window_left = s.wl;
    p.window_right = s.causal ? 0 : s.wr;
    return p;
  }
  mmm::AttentionBwdParams bwd() const {
    mmm::AttentionBwdParams p;
    p.fwd = fwd();
    p.dout = dout.get(); p.do_s = contiguous(s, s.hq, s.sq);
    p.dq = dq.get(); p.dq_s = contiguous(s, s.hq, s.sq);
    p.dk = dk.get(); p.dk_s = contiguous(s, s.hkv, s.sk);
    p.dv = dv.get(); p.dv_s = contiguous(s, s.hkv, s.sk);
    p.workspace = ws.get();
    p.deterministic = deterministic;
    return p;
  }
};

Problem make(const Shape& s, mmm::DType dt, uint64_t seed) {
  Problem pr{s, dt};
  const size_t e = dtype_size(dt), nq = size_t(s.b * s.hq * s.sq * s.d), nk = size_t(s.b * s.hkv * s.sk * s.d);
  pr.q.resize(nq * e); pr.o.resize(nq * e); pr.dout.resize(nq * e); pr.dq.resize(nq * e);
  pr.k.resize(nk * e); pr.v.resize(nk * e); pr.dk.resize(nk * e); pr.dv.resize(nk * e);
  pr.lse.resize(size_t(s.b * s.hq * s.sq) * 4);
  fill_random(pr.q.get(), nq, dt, seed + 1);
  fill_random(pr.k.get(), nk, dt, seed + 2);
  fill_random(pr.v.get(), nk, dt, seed + 3);
  fill_random(pr.dout.get(), nq, dt, seed + 4);
  MMM_CHECK_CUDA(cudaDeviceSynchronize());  // the fills ran on the legacy stream; the timings use another
  mmm::AttentionBwdParams det = pr.bwd(), fast = det;
  det.deterministic = true;
  fast.deterministic = false;
  pr.ws.resize(std::max({mmm::attention_bwd_cuda_workspace_bytes(det), mmm::attention_bwd_cuda_workspace_bytes(fast),
                         size_t(16)}));
  return pr;
}

double fwd_flops(const Shape& s) {
  const double f = 4.0 * s.b * s.hq * s.sq * s.sk * s.d;
  return s.causal ? f / 2 : f;
}

std::vector<float> download(const DeviceBuffer& b, size_t n, mmm::DType dt) {
  std::vector<unsigned char> raw(n * dtype_size(dt));
  MMM_CHECK_CUDA(cudaMemcpy(raw.data(), b.get(), raw.size(), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = load_as_float(raw.data(), i, dt);
  return out;
}

// max |gpu - cpu| / max |cpu| over out, lse, dq, dk, dv of a small case; the CPU twin reads the
// same (downloaded) inputs, in fp32.
double check_against_cpu(mmm::DType dt, bool deterministic) {
  // d = 64 when this build can run it (MMM_ATTENTION_HEAD_DIMS); 32 always can. 200 keys: two
  // key blocks of the atomic-dQ kernel add into each dq row.
  const Shape s{2, 4, 2, 77, 200, mmm::attention_compiled_head_dim(64) ? 64 : 32, false, 120, 5};
  Problem g = make(s, dt, 7);
  g.deterministic = deterministic;
  MMM_CHECK_LAUNCH(mmm::launch_attention_fwd(g.fwd(), nullptr), "fwd");
  MMM_CHECK_LAUNCH(mmm::launch_attention_bwd(g.bwd(), nullptr), "bwd");
  MMM_CHECK_CUDA(cudaDeviceSynchronize());
  const size_t nq = size_t(s.b * s.hq * s.sq * s.d), nk = size_t(s.b * s.hkv * s.sk * s.d);
  const size_t nl = size_t(s.b * s.hq * s.sq);
  auto q = download(g.q, nq, dt), k = download(g.k, nk, dt), v = download(g.v, nk, dt), dout = download(g.dout, nq, dt);
  std::vector<float> o(nq), lse(nl), dq(nq), dk(nk), dv(nk);
  mmm::AttentionFwdParams f = g.fwd();
  f.q = q.data(); f.k = k.data(); f.v = v.data(); f.out = o.data(); f.lse = lse.data();
  f.dtype = mmm::DType::kFloat32;
  mmm::attention_fwd_cpu(f, 0, mmm::attention_fwd_cpu_tasks(f));
  mmm::AttentionBwdParams b = g.bwd();
  b.fwd = f;
  b.dout = dout.data(); b.dq = dq.data(); b.dk = dk.data(); b.dv = dv.data();
  const mmm::AttentionBwdCpuPlan plan = mmm::attention_bwd_cpu_plan(b, 1);
  std::vector<double> ws(plan.workspace_bytes / sizeof(double) + 16);
  b.workspace = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 63) & ~uintptr_t(63));
  for (int phase = 0; phase < 3; ++phase) mmm::attention_bwd_cpu(b, plan, phase, 0, plan.tasks[phase]);
  std::vector<float> lse_gpu(nl);
  MMM_CHECK_CUDA(cudaMemcpy(lse_gpu.data(), g.lse.get(), nl * 4, cudaMemcpyDeviceToHost));
  double worst = 0;
  auto cmp = [&](const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    double err = 0, ref = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isinf(want[i]) && got[i] == want[i]) continue;  // rows with no key: lse = +inf
      err = std::max(err, std::fabs(double(got[i]) - want[i]));
      if (!std::isinf(want[i])) ref = std::max(ref, std::fabs(double(want[i])));
    }
    const double rel = err / std::max(ref, 1e-30);
    std::printf("  check %-4s max rel err %.2e\n", what, rel);
    worst = std::max(worst, rel);
  };
  cmp(download(g.o, nq, dt), o, "out");
  cmp(lse_gpu, lse, "lse");
  cmp(download(g.dq, nq, dt), dq, "dq");
  cmp(download(g.dk, nk, dt), dk, "dk");
  cmp(download(g.dv, nk, dt), dv, "dv");
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "bench_attention [--quick] [--reps N] [--json PATH]\n";
  const Args args = Args::parse(argc, argv, {}, usage);
  BenchDevice bd("bench_attention");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header(std::string("compiled head dims: ") + mmm::attention_compiled_head_dims());

  int failures = 0;
  for (mmm::DType dt : {mmm::DType::kBFloat16, mmm::DType::kFloat16})
    for (bool det : {true, false}) {
      std::printf("checking %s against the CPU twin, backward %s\n", dtype_name(dt), det ? "deterministic" : "default");
      const double err = check_against_cpu(dt, det), tol = dt == mmm::DType::kBFloat16 ? 4e-2 : 1e-2;
      if (!(err < tol)) {
        std::printf("  FAILED: %.2e >= %.0e\n", err, tol);
        ++failures;
      }
    }

  const int reps = args.reps ? args.reps : (args.quick ? 5 : 20);
  std::vector<int64_t> seqlens = args.quick ? std::vector<int64_t>{1024, 4096} : std::vector<int64_t>{512, 1024, 2048, 4096, 8192, 16384};
  Table table({"dtype", "D", "causal", "B", "H", "S", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s", "det bwd TF/s"});
  std::vector<JsonObject> records;
  for (mmm::DType dt : {mmm::DType::kBFloat16, mmm::DType::kFloat16}) {
    if (args.quick && dt == mmm::DType::kFloat16) break;
    for (int64_t d : {64, 128}) {
      if (mmm::attention_compiled_head_dim(d) == 0) {
        std::printf("skipping head dim %lld: no kernel in this build (MMM_ATTENTION_HEAD_DIMS)\n", (long long)d);
        continue;
      }
      for (bool causal : {false, true})
        for (int64_t s : seqlens) {
          const int64_t h = 2048 / d;  // model width 2048
          const Shape shape{std::max<int64_t>(1, 16384 / s), h, h, s, s, d, causal};
          Problem pr = make(shape, dt, 11);
          const auto fp = pr.fwd();
          const auto bp = pr.bwd();
          auto bp_det = bp;
          bp_det.deterministic = true;
          const Timing tf = time_median([&] { MMM_CHECK_LAUNCH(mmm::launch_attention_fwd(fp, stream), "fwd"); },
                                        stream, &flusher, reps, 2);
          const Timing tb = time_median([&] { MMM_CHECK_LAUNCH(mmm::launch_attention_bwd(bp, stream), "bwd"); },
                                        stream, &flusher, reps, 2);
          const Timing td = time_median([&] { MMM_CHECK_LAUNCH(mmm::launch_attention_bwd(bp_det, stream), "bwd"); },
                                        stream, &flusher, reps, 2);
          const double ff = fwd_flops(shape), bf = 2.5 * ff;
          table.add({dtype_name(dt), std::to_string(d), causal ? "yes" : "no", std::to_string(shape.b),
                     std::to_string(h), std::to_string(s), fmtf("%.3f", tf.median_ms),
                     fmtf("%.1f", ff / (tf.median_ms * 1e-3) / 1e12), fmtf("%.3f", tb.median_ms),
                     fmtf("%.1f", bf / (tb.median_ms * 1e-3) / 1e12), fmtf("%.1f", bf / (td.median_ms * 1e-3) / 1e12)});
          JsonObject r;
          r.str("dtype", dtype_name(dt)).integer("head_dim", d).boolean("causal", causal)
              .integer("batch", shape.b).integer("heads", h).integer("seqlen", s)
              .num("fwd_ms", tf.median_ms).num("fwd_tflops", ff / (tf.median_ms * 1e-3) / 1e12)
              .num("bwd_ms", tb.median_ms).num("bwd_tflops", bf / (tb.median_ms * 1e-3) / 1e12)
              .boolean("bwd_atomic_dq", mmm::attention_bwd_uses_atomic_dq(bp))
              .num("bwd_det_ms", td.median_ms).num("bwd_det_tflops", bf / (td.median_ms * 1e-3) / 1e12)
              .integer("reps", reps);
          records.push_back(r);
        }
    }
  }
  table.print();
  std::printf("FLOPs: forward 4*B*H*S*S*D (halved when causal), backward 2.5x forward; cold L2; median.\n");
  JsonObject extra = bd.env(reps);
  extra.boolean("checks_passed", failures == 0);
  return bd.finish(args.json_path, "attention", records, extra, failures);
}
