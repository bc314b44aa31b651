// Standalone benchmark of mmm's fftconv CUDA kernels (no torch).
//
//   y = postgate * (irfft(rfft(pregate * u, L) * rfft(k, L))[..., :N] + bias * u),  u (B, H, N)
//
// Sweep: H = 768, N in {256, 1024, 4096, 8192, 16384, 32768} (32768 is beyond one CTA's shared memory
// on every GPU: the scratch path), B = max(1, 2^25 / (H * N)) (u ~ 64 MB in bf16), dtype bf16
// and fp16, gated with bias; forward and backward (all five gradients). Flags: see --help.
//
// Method: inputs filled on the device by a hash-based kernel (untimed); before each timed run the
// L2 is flushed by a cudaMemsetAsync of 4x the L2 size; CUDA events on one stream; median of
// --reps runs (default 30) after 3 warm-up runs. Each run includes k's spectrum (part of the op).
//
// Byte model (E = B*H*N, s = bytes per element, K = H*N*s; GB/s = bytes / median time, decimal):
//   fwd  read u, pregate, postgate, k; write y                      4*E*s + K
//   bwd  read dy, u, pregate, postgate, k; write du, dpre, dpost, dk   7*E*s + 2K
// "%BW" = GB/s over the copy bandwidth measured here (cudaMemcpyAsync D2D of 1 GiB, read+write).
// path "smem x2": rows split over clusters of two CTAs (sm_90: on an H100 the forward at
// N = 16384, the backward at 8192 and 16384); those cases also time op "fwd_1cta" / "bwd_1cta",
// the same with FFTConvParams::split_rows = false.
//
// Check: after the first forward and backward, the rows (b = 0, h = 0, 1) of y, du, dpregate and
// dpostgate are compared with the CPU twin (fftconv_*_cpu) on copies of the same rows:
// max |gpu - cpu| / max |cpu| under 2e-2 (bf16) or 4e-3 (fp16). dk and dbias (sums over the
// batch) are not checked here. A failed check or any CUDA error exits with status 1.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "fftconv/params.h"  // include dir: csrc/
#include "bench_common.cuh"

using mmm::DType;
using namespace mmm_bench;

namespace {

const char* kUsage =
    "usage: bench_fftconv [--json PATH] [--reps N] [--quick] [--n N1,N2,...] [--no-check 1]\n"
    "  --json PATH   write the records as JSON to PATH (overwritten)\n"
    "  --reps N      timed runs per measurement (default 30; with --quick 10)\n"
    "  --quick       N in {1024, 16384}, bf16 only\n"
    "  --n LIST      comma-separated N values instead of the default sweep\n"
    "  --no-check 1  skip the comparison with the CPU twin\n"
    "  env MMM_COMMIT is recorded in the JSON as the commit.\n";

}  // namespace

int main(int argc, char** argv) {
  Args args = Args::parse(argc, argv, {"--n", "--no-check"}, kUsage);
  const bool do_check = args.get("--no-check", "0") == "0";
  const int reps = args.reps > 0 ? args.reps : (args.quick ? 10 : 30);
  std::vector<int64_t> ns = args.quick ? std::vector<int64_t>{1024, 16384}
                                       : std::vector<int64_t>{256, 1024, 4096, 8192, 16384, 32768};
  if (args.get("--n", "") != "") ns = parse_list(args.get("--n", ""));
  std::vector<DType> dts = {DType::kBFloat16};
  if (!args.quick) dts.push_back(DType::kFloat16);

  BenchDevice bd("bench_fftconv");
  auto& [dev, stream, copy_bps, optin, flusher] = bd;
  bd.print_header();

  const int64_t H = 768;
  Table table({"N", "B", "dtype", "op", "path", "time us", "GB/s", "% copy BW", "check"});
  std::vector<JsonObject> records;
  int failures = 0;
  uint64_t seed = 1;
  DeviceBuffer workspace;

  for (DType dt : dts)
    for (int64_t N : ns) {
      const int64_t B = std::max<int64_t>(1, (int64_t(1) << 25) / (H * N));
      const size_t E = size_t(B * H * N), es = dtype_size(dt);
      DeviceBuffer u(E * es), pre(E * es), post(E * es), y(E * es), dy(E * es), du(E * es), dpre(E * es),
          dpost(E * es), k(H * N * es), dk(H * N * es), bias(H * es), dbias(H * es);
      fill_random(u.get(), E, dt, seed++, -1.f, 1.f, stream);
      fill_random(pre.get(), E, dt, seed++, -1.f, 1.f, stream);
      fill_random(post.get(), E, dt, seed++, -1.f, 1.f, stream);
      fill_random(dy.get(), E, dt, seed++, -1.f, 1.f, stream);
      fill_random(k.get(), H * N, dt, seed++, -0.03f, 0.03f, stream);
      fill_random(bias.get(), H, dt, seed++, -1.f, 1.f, stream);

      mmm::FFTConvBwdParams p;
      p.batch = B; p.channels = H; p.n = N;
      while ((int64_t(1) << p.log2_fft) < 2 * N) ++p.log2_fft;
      p.dtype = dt; p.k_dtype = dt; p.bias_dtype = dt;
      p.u = u.get(); p.u_rs = N;
      p.pregate = pre.get(); p.pre_rs = N;
      p.postgate = post.get(); p.post_rs = N;
      p.k = k.get(); p.k_rs = N;
      p.bias = bias.get();
      p.y = y.get();
      p.dy = dy.get(); p.dy_rs = N;
      p.du = du.get(); p.dpregate = dpre.get(); p.dpostgate = dpost.get(); p.dk = dk.get(); p.dbias = dbias.get();
      const mmm::FFTConvParams& fp = p;
      mmm::FFTConvBwdParams p1 = p;  // one CTA per row (per task), for fwd_1cta / bwd_1cta
      p1.split_rows = false;
      const mmm::FFTConvParams& fp1 = p1;
      // bwd_1cta may need scratch that the split backward does not.
      const size_t ws = std::max({mmm::fftconv_cuda_fwd_workspace_bytes(fp, dev.id),
                                  mmm::fftconv_cuda_bwd_workspace_bytes(p, dev.id),
                                  mmm::fftconv_cuda_bwd_workspace_bytes(p1, dev.id)});
      workspace.resize(std::max<size_t>(ws, 16));
      const std::string tag = std::string(dtype_name(dt)) + " N=" + std::to_string(N);
      auto fwd = [&] { MMM_CHECK_LAUNCH(mmm::launch_fftconv_fwd(fp, workspace.get(), stream), "fwd " + tag); };
      auto bwd = [&] { MMM_CHECK_LAUNCH(mmm::launch_fftconv_bwd(p, workspace.get(), stream), "bwd " + tag); };
      const size_t buf = size_t(1) << (p.log2_fft - 1) << 3;  // one row's buffer: L/2 float2
      const bool splits = mmm::fftconv_cuda_fwd_splits(fp, dev.id), bwd_splits = mmm::fftconv_cuda_bwd_splits(p, dev.id);
      const std::string path_fwd = splits ? "smem x2" : buf + 1024 <= size_t(optin) ? "smem" : "scratch";
      auto fwd_1cta = [&] { MMM_CHECK_LAUNCH(mmm::launch_fftconv_fwd(fp1, workspace.get(), stream), "fwd_1cta " + tag); };
      auto bwd_1cta = [&] { MMM_CHECK_LAUNCH(mmm::launch_fftconv_bwd(p1, workspace.get(), stream), "bwd_1cta " + tag); };
      const std::string path_1cta = "smem";
      const std::string path_bwd_1cta = 2 * buf + 1024 <= size_t(optin) ? "smem"
                                        : buf + 1024 <= size_t(optin)  ? "smem+scratch" : "scratch";
      const std::string path_bwd = bwd_splits ? "smem x2" : path_bwd_1cta;

      fwd();
      bwd();
      MMM_CHECK_CUDA(cudaStreamSynchronize(stream));
      std::string check_fwd = "-", check_bwd = "-";
      double err_fwd = NAN, err_bwd = NAN;
      if (do_check) {
        // Rows (b = 0, h = 0, 1) are the first 2 rows of every (B, H, N) tensor.
        const int64_t hc = std::min<int64_t>(2, H), cnt = hc * N;
        auto hu = to_host(u.get(), cnt * es), hpre = to_host(pre.get(), cnt * es),
             hpost = to_host(post.get(), cnt * es), hdy = to_host(dy.get(), cnt * es),
             hk = to_host(k.get(), cnt * es), hb = to_host(bias.get(), hc * es);
        std::vector<unsigned char> ry(cnt * es), rdu(cnt * es), rdpre(cnt * es), rdpost(cnt * es);
        mmm::FFTConvBwdParams hp = p;
        hp.batch = 1; hp.channels = hc;
        hp.u = hu.data(); hp.pregate = hpre.data(); hp.postgate = hpost.data(); hp.k = hk.data();
        hp.bias = hb.data(); hp.y = ry.data(); hp.dy = hdy.data();
        hp.du = rdu.data(); hp.dpregate = rdpre.data(); hp.dpostgate = rdpost.data();
        hp.dk = nullptr; hp.dbias = nullptr;
        // 64-byte aligned, as the CPU kernels need (params.h); no workspace without dk and dbias.
        std::vector<double> kspec_raw(mmm::fftconv_cpu_kspec_bytes(hp) / sizeof(double) + 9);
        double* kspec = reinterpret_cast<double*>((reinterpret_cast<uintptr_t>(kspec_raw.data()) + 63) & ~uintptr_t(63));
        const int64_t groups = mmm::fftconv_cpu_groups(hp);
        mmm::fftconv_kspec_cpu(hp, kspec, 0, groups);
        mmm::fftconv_fwd_cpu(hp, kspec, 0, hp.batch * groups);
        for (int64_t t = 0; t < mmm::fftconv_bwd_cpu_tasks(hp); ++t) mmm::fftconv_bwd_cpu_task(hp, kspec, nullptr, t);
        const double tol = dt == DType::kBFloat16 ? 2e-2 : 4e-3;
        err_fwd = rel_err(to_host(y.get(), cnt * es).data(), ry.data(), cnt, dt);
        err_bwd = std::max({rel_err(to_host(du.get(), cnt * es).data(), rdu.data(), cnt, dt),
                            rel_err(to_host(dpre.get(), cnt * es).data(), rdpre.data(), cnt, dt),
                            rel_err(to_host(dpost.get(), cnt * es).data(), rdpost.data(), cnt, dt)});
        check_fwd = err_fwd <= tol ? "ok" : "FAIL " + fmtf("%.1e", err_fwd);
        check_bwd = err_bwd <= tol ? "ok" : "FAIL " + fmtf("%.1e", err_bwd);
        failures += (err_fwd <= tol ? 0 : 1) + (err_bwd <= tol ? 0 : 1);
      }

      const double e = double(E), s = double(es), kb = double(H * N) * s;
      const Timing tf = time_median(fwd, stream, &flusher, reps, 3);
      const Timing tb = time_median(bwd, stream, &flusher, reps, 3);
      const Timing t1 = splits ? time_median(fwd_1cta, stream, &flusher, reps, 3) : tf;
      const Timing tb1 = bwd_splits ? time_median(bwd_1cta, stream, &flusher, reps, 3) : tb;
      struct Row { const char* op; const Timing& t; double bytes; const std::string& path; const std::string& check;
                   double err; };
      const std::string unchecked = "-";
      const Row rows[] = {{"fwd", tf, 4 * e * s + kb, path_fwd, check_fwd, err_fwd},
                          {"bwd", tb, 7 * e * s + 2 * kb, path_bwd, check_bwd, err_bwd},
                          {"fwd_1cta", t1, 4 * e * s + kb, path_1cta, unchecked, NAN},
                          {"bwd_1cta", tb1, 7 * e * s + 2 * kb, path_bwd_1cta, unchecked, NAN}};
      for (const Row& r : rows) {
        if (std::string(r.op) == "fwd_1cta" && !splits) continue;
        if (std::string(r.op) == "bwd_1cta" && !bwd_splits) continue;
        const double gbps = r.bytes / (r.t.median_ms * 1e-3) / 1e9;
        const double pct = 100.0 * r.bytes / (r.t.median_ms * 1e-3) / copy_bps;
        table.add({std::to_string(N), std::to_string(B), dtype_name(dt), r.op, r.path,
                   fmtf("%.1f", r.t.median_ms * 1e3), fmtf("%.0f", gbps), fmtf("%.1f", pct), r.check});
        JsonObject j;
        j.integer("N", N).integer("B", B).integer("H", H).str("dtype", dtype_name(dt)).boolean("gated", true)
            .str("op", r.op).str("path", r.path).num("bytes", r.bytes)
            .num("GBps", gbps).num("pct_copy_bw", pct).str("check", r.check).num("check_rel_err", r.err);
        add_timing(j, r.t);
        records.push_back(j);
      }
    }
  MMM_CHECK_CUDA(cudaStreamSynchronize(stream));

  table.print();
  print_copy_bandwidth(copy_bps);
  return bd.finish(args.json_path, "fftconv", records, bd.env(reps), failures);
}
