// Runs launch_butterfly_forward / launch_butterfly_backward (the CUDA launcher and kernels,
// compiled for the host through cuda_on_cpu.h, one fiber per CUDA thread) against the CPU
// twin on random inputs: every dtype pair,
// stacks, blocks, padded/trimmed and strided rows, both stride orders, and shared-memory limits
// of 227 KB, 4 KB and 1 KB (the last two force the multi-pass forward and backward at small n).
//   tests/emulate/run.sh butterfly
// (tests/test_butterfly.py::test_cuda_kernels_on_cpu_threads runs it when MMM_EMULATE=1).
#include <complex>
#include <cstdio>
#include <random>
#include <string>
#include <vector>
#include "butterfly/params.h"
#include "core/numeric.h"
#include "cuda_on_cpu.h"
using namespace mmm;
static std::mt19937 rng(1);
static float rnd() { return std::normal_distribution<float>(0.f, 0.7f)(rng); }
// storage bytes
static int esz(DType t) { return int(elem_bytes(t)); }
static void fill(std::vector<char>& buf, DType t, int64_t count) {
  buf.assign(size_t(count * esz(t)), 0);
  for (int64_t i = 0; i < count; ++i) {
    switch (t) {
      case DType::kFloat32: reinterpret_cast<float*>(buf.data())[i] = rnd(); break;
      case DType::kFloat16: reinterpret_cast<Half*>(buf.data())[i] = from_float<Half>(rnd()); break;
      case DType::kBFloat16: reinterpret_cast<BFloat16*>(buf.data())[i] = from_float<BFloat16>(rnd()); break;
      case DType::kComplex64: reinterpret_cast<std::complex<float>*>(buf.data())[i] = {rnd(), rnd()}; break;
      default: break;
    }
  }
}
static std::complex<double> get(const std::vector<char>& b, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32: return reinterpret_cast<const float*>(b.data())[i];
    case DType::kFloat16: return to_float(reinterpret_cast<const Half*>(b.data())[i]);
    case DType::kBFloat16: return to_float(reinterpret_cast<const BFloat16*>(b.data())[i]);
    case DType::kComplex64: return std::complex<double>(reinterpret_cast<const std::complex<float>*>(b.data())[i]);
    default: return 0;
  }
}
static double maxdiff(const std::vector<char>& a, const std::vector<char>& b, DType t, int64_t count, double* scale) {
  double m = 0, s = 0;
  for (int64_t i = 0; i < count; ++i) { m = std::max(m, std::abs(get(a, t, i) - get(b, t, i))); s = std::max(s, std::abs(get(b, t, i))); }
  *scale = s;
  return m;
}
static CpuParallelFor serial = [](int64_t b, int64_t e, int64_t, const std::function<void(int64_t, int64_t)>& f) { f(b, e); };
int run_case(int64_t batch, int64_t nstacks, int64_t nblocks, int64_t log_n, int64_t n_in, bool inc, DType xt, DType wt, int64_t x_rs_extra) {
  ButterflyParams p;
  p.batch = batch; p.nstacks = nstacks; p.nblocks = nblocks; p.log_n = log_n; p.n = int64_t(1) << log_n; p.n_in = n_in;
  p.increasing_stride = inc; p.x_dtype = xt; p.tw_dtype = wt;
  const int64_t rows = batch * nstacks, n = p.n, L = nblocks * log_n, twn = nstacks * L * n / 2 * 4;
  const int64_t x_rs = n_in + x_rs_extra, dy_rs = n + x_rs_extra;
  std::vector<char> x, tw, dy;
  fill(x, xt, (rows - 1) * x_rs + n_in);
  fill(tw, wt, twn);
  fill(dy, xt, (rows - 1) * dy_rs + n);
  p.x = x.data(); p.x_row_stride = x_rs; p.twiddle = tw.data(); p.dy = dy.data(); p.dy_row_stride = dy_rs;
  std::vector<char> y_cpu(rows * n * esz(xt)), y_gpu(rows * n * esz(xt)), dx_cpu(rows * n_in * esz(xt), 0), dx_gpu(rows * n_in * esz(xt), 0);
  std::vector<char> dtw_cpu(twn * esz(wt)), dtw_gpu(twn * esz(wt));
  p.y = y_cpu.data(); p.dx = dx_cpu.data(); p.dtwiddle = dtw_cpu.data();
  butterfly_forward_cpu(p, serial);
  butterfly_backward_cpu(p, serial);
  p.y = y_gpu.data(); p.dx = dx_gpu.data(); p.dtwiddle = dtw_gpu.data();
  std::vector<char> ws(butterfly_cuda_workspace_bytes(p, false, 0) + 1);
  const char* e1 = launch_butterfly_forward(p, ws.data(), nullptr);
  std::vector<char> wsb(butterfly_cuda_workspace_bytes(p, true, 0) + 1);
  const char* e2 = launch_butterfly_backward(p, wsb.data(), nullptr);
  if (e1 || e2) { printf("launch error %s %s\n", e1 ? e1 : "", e2 ? e2 : ""); return 1; }
  double s1, s2, s3;
  const double d1 = maxdiff(y_gpu, y_cpu, xt, rows * n, &s1), d2 = maxdiff(dx_gpu, dx_cpu, xt, rows * n_in, &s2),
               d3 = maxdiff(dtw_gpu, dtw_cpu, wt, twn, &s3);
  const double tol = (xt == DType::kBFloat16 || wt == DType::kBFloat16) ? 2e-2 : (xt == DType::kFloat16 || wt == DType::kFloat16) ? 4e-3 : 2e-5;
  const bool ok = d1 <= tol * std::max(1.0, s1) && d2 <= tol * std::max(1.0, s2) && d3 <= tol * std::max(1.0, s3);
  printf("%s batch=%ld S=%ld nb=%ld log_n=%ld n_in=%ld inc=%d xt=%d wt=%d  y %.2e/%.1e dx %.2e/%.1e dtw %.2e/%.1e\n", ok ? "OK " : "BAD",
         (long)batch, (long)nstacks, (long)nblocks, (long)log_n, (long)n_in, inc, int(xt), int(wt), d1, s1, d2, s2, d3, s3);
  return ok ? 0 : 1;
}
// "quick" (ThreadSanitizer, memory counts): every path and dtype, fewer sizes.
int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  emu::max_block_threads = 256;  // the kernels' __launch_bounds__
  int bad = 0;
  const DType F = DType::kFloat32, H = DType::kFloat16, B = DType::kBFloat16, C = DType::kComplex64;
  for (int optin : {232448, 4096, 1024}) {
    emu::optin_smem = optin; emu::sms = 3;
    printf("-- optin %d\n", optin);
    for (int log_n : {1, 2, 5, 8, 10}) for (bool inc : {true, false}) {
      // At n = 1024 the 1 KB limit splits every path into at least as many passes as 4 KB does.
      if (quick && (log_n == 2 || log_n == 8 || (log_n == 10 && optin == 4096))) continue;
      const int64_t n = int64_t(1) << log_n;
      bad += run_case(13, 1, 1, log_n, n, inc, F, F, 0);
      bad += run_case(5, 2, 3, log_n, n + 3, inc, F, F, 2);
      bad += run_case(3, 3, 2, log_n, n > 2 ? n - 1 : 1, inc, C, C, 1);
      bad += run_case(9, 1, 2, log_n, n, inc, B, F, 0);
      bad += run_case(4, 2, 1, log_n, n, inc, H, H, 0);
    }
  }
  emu::optin_smem = 232448; emu::sms = 132;
  if (!quick) {
    bad += run_case(2, 1, 1, 16, 65536, true, F, F, 0);
    bad += run_case(2, 1, 1, 15, 30000, false, C, C, 0);
  }
  bad += run_case(40, 1, 1, 12, 4096, false, B, B, 0);
  printf("max smem used %zu\n", emu::max_smem_used);
  printf(bad ? "FAILURES: %d\n" : "all ok %d\n", bad);
  return bad != 0;
}
