// Runs launch_fused_add_norm_fwd / launch_fused_add_norm_bwd (csrc/fused_add_norm: the real
// launcher, kernels and instantiations, compiled for the host by tests/emulate/run.sh) on CPU
// threads - one fiber per CUDA thread, warp shuffles and __syncthreads as barriers, under
// ASan/UBSan or ThreadSanitizer - against the CPU twin (fused_add_norm_fwd_cpu,
// fused_add_norm_bwd_cpu_*).
//   tests/emulate/run.sh fused_add_norm
// (tests/test_fused_add_norm.py::test_cuda_kernels_on_cpu_threads runs it when MMM_EMULATE=1).
//
// The launcher sizes a persistent grid from the SM count and occupancy: the driver reports 3 SMs
// with 1 CTA each, so every CTA strides over several row groups and the backward's dweight/dbias
// come from several partial rows (and, for looped rows, 1-2 row slices of the column kernel);
// two fp16 cases report 20 SMs: 20 partial rows (the reduce kernel's 8 lanes all busy) and 5
// row slices.
// Cases cover every row shape the launcher picks (forward: a warp per row up to 128 chunks of
// 16 bytes, 4 warps up to 512, 16 warps up to 2048, looped beyond; backward: 64 / 256 / 1024),
// for fp32 (4 per chunk) and bf16 (8 per chunk), plus fp16 on a few: N = 1, 7, 64, odd N (the
// scalar tails), rows not a multiple of the 4 rows per CTA, residual in x's dtype or fp32, fp32
// weights, no weight / bias, prenorm (h_out) or not, RMSNorm, gelu / gelu_tanh, dropout, the
// grad of residual_out, and unaligned rows (stride N odd: the element-wise path throughout).
//
// Tolerance. Kernel and twin compute the same formulas in fp32 from the same inputs and round at
// the same points (h to its dtype, the outputs); they differ only in the order of the row sums
// (warp shuffles and the shared-memory step vs the twin's vector lanes; the looped forward's
// shifted sums), rsqrtf vs 1/sqrt, FMA contraction in the twin's AVX2 build, and for dweight /
// dbias the partial-sum grouping. Those are fp32 rounding noise, relative ~1e-7 per operation and
// well under 2^-16 of the largest value of the row (or of the vector, for dweight / dbias) even
// after the cancellation in dx = rstd (dxhat - c2 - xhat c1); a differing fp32 value may then
// round to the neighbouring fp16 / bf16 value: one ulp, <= eps |twin| (eps = 2^-7 bf16, 2^-10
// fp16, 0 fp32). So |kernel - twin| <= eps |twin| + 2^-16 scale, scale = max |twin| over the row
// (or vector); mean: 2^-16 / rstd; rstd: 2^-16 rstd. An index, mask or reduction bug moves
// elements by O(scale) and fails by orders of magnitude; "worst" is the largest err / tol.
// Dropout: where the mask (Philox, recomputed here with dropout_keep) drops an element, h must
// be exactly the residual (or 0) and dx exactly 0 - in kernel and twin alike, bit for bit.
// Never-written elements: outputs start as 0x7f bytes and the row padding must keep them.
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_on_cpu.h"
#include "typed_buffer.h"
#include "core/philox.h"
#include "fused_add_norm/params.h"

using namespace mmm;

static std::mt19937 rng(5);

static bool same_bits(DType t, const Buffer& a, int64_t i, const Buffer& b, int64_t j) {
  return std::memcmp(a.data() + i * esz(t), b.data() + j * esz(t), esz(t)) == 0;
}
// Compares a (rows, n) tensor with row stride rs, and checks the padding columns n..rs kept the
// 0x7f fill.
struct Cmp {
  double worst = 0;
  int64_t bad = 0, nan = 0, pad = 0;
  void one(double got, double ref, double tol) {
    if (std::isnan(got)) { ++nan; ++bad; return; }
    const double err = std::fabs(got - ref);
    if (!(err <= tol)) ++bad;
    worst = std::max(worst, tol > 0 ? err / tol : err > 0 ? INFINITY : 0);
  }
  void rows2d(DType t, const Buffer& got, const Buffer& ref, int64_t rows, int64_t n, int64_t rs) {
    const Buffer fill(esz(t), 0x7f);
    for (int64_t r = 0; r < rows; ++r) {
      double scale = 0;
      for (int64_t j = 0; j < n; ++j) scale = std::max(scale, double(std::fabs(get(t, ref, r * rs + j))));
      for (int64_t j = 0; j < n; ++j) {
        const double f = get(t, ref, r * rs + j);
        one(get(t, got, r * rs + j), f, eps_of(t) * std::fabs(f) + 0x1p-16 * scale);
      }
      if (r + 1 < rows)
        for (int64_t j = n; j < rs; ++j) pad += !same_bits(t, got, r * rs + j, fill, 0);
    }
    bad += pad;
  }
};

struct Case {
  std::string name;
  int64_t rows, n;
  DType x = DType::kBFloat16, h = DType::kBFloat16, w = DType::kBFloat16;
  bool res = true, hout = true, weight = true, bias = true, rms = false, dh = false;
  Activation act = Activation::kNone;
  double p = 0;
  bool aligned = true;  // padded row strides (16-byte multiples) vs stride = n
  int sms = 3;          // SMs the device reports (see main)
};

static int failures = 0;
static void report(const char* what, const Case& c, const Cmp& m) {
  const bool ok = m.bad == 0;
  std::printf("  %s %-10s worst %.3f%s", ok ? "ok " : "BAD", what, m.worst, m.nan ? "  NaN" : "");
  if (!ok) std::printf("  over tolerance %" PRId64 " (NaN %" PRId64 ", padding %" PRId64 ")", m.bad, m.nan, m.pad);
  std::printf("\n");
  failures += !ok;
  (void)c;
}

static void run_case(const Case& c) {
  const int64_t R = c.rows, N = c.n;
  const int64_t rs = c.aligned ? (N + 7) / 8 * 8 + 8 : N;
  std::printf("%s: rows %" PRId64 " N %" PRId64 " x %s h %s w %s%s%s%s%s%s%s%s%s p %.2f%s\n", c.name.c_str(), R, N,
              tname(c.x), tname(c.h), tname(c.w), c.res ? " res" : "", c.hout ? " h_out" : "",
              c.weight ? " weight" : "", c.bias ? " bias" : "", c.rms ? " rms" : "", c.dh ? " dh_out" : "",
              c.act == Activation::kGelu ? " gelu" : c.act == Activation::kGeluTanh ? " gelu_tanh" : "",
              c.aligned ? "" : " unaligned", "", c.p, "");
  std::fflush(stdout);
  Buffer x = random_buffer(rng, c.x, R * rs), res = random_buffer(rng, c.h, R * rs);
  Buffer wt = random_buffer(rng, c.w, N, 1.f, 0.5f), bs = random_buffer(rng, c.w, N, 0.f, 0.5f);
  FusedAddNormFwdParams f;
  f.rows = R; f.cols = N;
  f.x = x.data(); f.x_row_stride = rs; f.x_dtype = c.x;
  if (c.res) { f.residual = res.data(); f.res_row_stride = rs; }
  f.h_dtype = c.h;
  f.weight = c.weight ? wt.data() : nullptr; f.bias = c.bias ? bs.data() : nullptr; f.w_dtype = c.w;
  f.out_row_stride = rs; f.h_row_stride = rs;
  f.eps = 1e-5; f.rms = c.rms; f.act = c.act; f.dropout_p = c.p; f.seed = 0x1234567890abcdefull;

  // Twin (always with h_out: backward reads it), then kernel with the case's h_out.
  Buffer out_t(size_t(R * rs) * esz(c.x), 0x7f), h_t(size_t(R * rs) * esz(c.h), 0x7f);
  std::vector<float> mean_t(static_cast<size_t>(R)), rstd_t(static_cast<size_t>(R));
  f.out = out_t.data(); f.h_out = h_t.data(); f.mean = mean_t.data(); f.rstd = rstd_t.data();
  fused_add_norm_fwd_cpu(f, 0, R);
  Buffer out_k(out_t.bytes, 0x7f), h_k(h_t.bytes, 0x7f);
  std::vector<float> mean_k(static_cast<size_t>(R), NAN), rstd_k(static_cast<size_t>(R), NAN);
  f.out = out_k.data(); f.h_out = c.hout ? h_k.data() : nullptr; f.mean = mean_k.data(); f.rstd = rstd_k.data();
  if (const char* e = launch_fused_add_norm_fwd(f, nullptr)) { std::printf("  BAD launch fwd: %s\n", e); ++failures; return; }
  if (!c.hout) {  // the twin again without h_out: the output must not depend on it
    Buffer out_t2(out_t.bytes, 0x7f);
    f.out = out_t2.data(); f.h_out = nullptr; f.mean = mean_t.data(); f.rstd = rstd_t.data();
    fused_add_norm_fwd_cpu(f, 0, R);
    if (std::memcmp(out_t2.data(), out_t.data(), out_t.bytes)) { std::printf("  BAD twin out depends on h_out\n"); ++failures; }
  }
  { Cmp m; m.rows2d(c.x, out_k, out_t, R, N, rs); report("out", c, m); }
  if (c.hout) { Cmp m; m.rows2d(c.h, h_k, h_t, R, N, rs); report("h_out", c, m); }
  {
    Cmp mm, mr;
    for (int64_t r = 0; r < R; ++r) {
      if (!c.rms) mm.one(mean_k[size_t(r)], mean_t[size_t(r)], 0x1p-16 / rstd_t[size_t(r)]);
      mr.one(rstd_k[size_t(r)], rstd_t[size_t(r)], 0x1p-16 * rstd_t[size_t(r)]);
    }
    if (!c.rms) report("mean", c, mm);
    report("rstd", c, mr);
  }
  // The dropout mask, bit for bit: dropped -> h is exactly the residual (or 0); kept (no
  // residual) -> h != 0.
  const uint32_t thr = dropout_threshold(c.p);
  if (c.p > 0) {
    int64_t mis_k = 0, mis_t = 0, dropped = 0;
    const Buffer zero(4);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < N; ++j) {
        const bool keep = dropout_keep(f.seed, uint64_t(r * N + j), thr);
        dropped += !keep;
        auto check = [&](const Buffer& h) {
          if (!keep) return c.res ? same_bits(c.h, h, r * rs + j, res, r * rs + j) : get(c.h, h, r * rs + j) == 0.f;
          return c.res || get(c.h, h, r * rs + j) != 0.f;
        };
        mis_t += !check(h_t);
        if (c.hout) mis_k += !check(h_k);
      }
    const bool ok = mis_t == 0 && mis_k == 0;
    std::printf("  %s mask       dropped %" PRId64 "/%" PRId64 ", mismatches kernel %" PRId64 " twin %" PRId64 "%s\n",
                ok ? "ok " : "BAD", dropped, R * N, mis_k, mis_t, c.hout ? "" : " (kernel: see dx)");
    failures += !ok;
  }

  // Backward from the twin's h, mean, rstd.
  Buffer dout = random_buffer(rng, c.x, R * rs), dh = random_buffer(rng, c.h, R * rs);
  FusedAddNormBwdParams b;
  b.rows = R; b.cols = N;
  b.dout = dout.data(); b.dout_row_stride = rs;
  if (c.dh) { b.dh_out = dh.data(); b.dh_out_row_stride = rs; }
  b.h = h_t.data(); b.h_row_stride = rs;
  b.x_dtype = c.x; b.h_dtype = c.h;
  b.weight = f.weight; b.bias = f.bias; b.w_dtype = c.w;
  b.mean = c.rms ? nullptr : mean_t.data(); b.rstd = rstd_t.data();
  b.dx_row_stride = rs; b.dres_row_stride = rs;
  b.rms = c.rms; b.act = c.act; b.dropout_p = c.p; b.seed = f.seed;
  Buffer dx_t(size_t(R * rs) * esz(c.x), 0x7f), dr_t(size_t(R * rs) * esz(c.h), 0x7f);
  Buffer dw_t(size_t(N) * esz(c.w), 0x7f), db_t(size_t(N) * esz(c.w), 0x7f);
  b.dx = dx_t.data(); b.dresidual = c.res ? dr_t.data() : nullptr;
  b.dweight = c.weight ? dw_t.data() : nullptr; b.dbias = c.bias ? db_t.data() : nullptr;
  std::vector<char> ws_t(fused_add_norm_bwd_cpu_workspace_bytes(b) + 16);
  b.workspace = ws_t.data();
  for (int64_t q = 0; q < fused_add_norm_bwd_cpu_partitions(b); ++q) fused_add_norm_bwd_cpu_partition(b, q);
  fused_add_norm_bwd_cpu_finalize(b, 0, N);

  Buffer dx_k(dx_t.bytes, 0x7f), dr_k(dr_t.bytes, 0x7f), dw_k(dw_t.bytes, 0x7f), db_k(db_t.bytes, 0x7f);
  b.dx = dx_k.data(); b.dresidual = c.res ? dr_k.data() : nullptr;
  b.dweight = c.weight ? dw_k.data() : nullptr; b.dbias = c.bias ? db_k.data() : nullptr;
  const size_t wsb = fused_add_norm_bwd_cuda_workspace_bytes(b, 0);
  Buffer ws_k(wsb, 0xff);  // NaN: a partial nobody wrote shows
  b.workspace = wsb ? ws_k.data() : nullptr;
  if (const char* e = launch_fused_add_norm_bwd(b, nullptr)) { std::printf("  BAD launch bwd: %s\n", e); ++failures; return; }
  { Cmp m; m.rows2d(c.x, dx_k, dx_t, R, N, rs); report("dx", c, m); }
  if (c.res) { Cmp m; m.rows2d(c.h, dr_k, dr_t, R, N, rs); report("dresidual", c, m); }
  if (c.weight) { Cmp m; m.rows2d(c.w, dw_k, dw_t, 1, N, N); report("dweight", c, m); }
  if (c.bias) { Cmp m; m.rows2d(c.w, db_k, db_t, 1, N, N); report("dbias", c, m); }
  if (wsb) std::printf("  (workspace: %zu partial rows)\n", wsb / (2 * size_t(N) * 4));
  std::fflush(stdout);
  if (c.p > 0) {
    int64_t mis = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < N; ++j)
        if (!dropout_keep(f.seed, uint64_t(r * N + j), thr))
          mis += get(c.x, dx_k, r * rs + j) != 0.f || get(c.x, dx_t, r * rs + j) != 0.f;
    std::printf("  %s dx mask    mismatches %" PRId64 "\n", mis ? "BAD" : "ok ", mis);
    failures += mis != 0;
  }
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  emu::max_block_threads = 512;  // the kernels' largest block (16 warps)
  emu::sms = 3;                  // a persistent grid of <= 3 CTAs: CTAs stride over rows
  emu::blocks_per_sm = 1;
  const DType F = DType::kFloat32, B = DType::kBFloat16, H = DType::kFloat16;
  using A = Activation;
  std::vector<Case> cs;
  auto add = [&](Case c) { cs.push_back(c); };
  // Warp per row (4 rows per CTA): tiny and odd N, rows not a multiple of 4.
  add({"N1 warp", 5, 1, B, B, B});
  add({"N7 warp, rms, no bias, fp32 h", 6, 7, B, F, B, true, true, true, false, true});
  add({"N64 warp fp32, gelu, dropout", 13, 64, F, F, F, true, true, true, true, false, false, A::kGelu, 0.25});
  add({"N64 warp, dropout, no residual", 9, 64, B, B, B, false, true, true, true, false, false, A::kNone, 0.25});
  add({"N100 warp fp16, fp32 weights, gelu_tanh, dh_out", 7, 100, H, H, F, true, true, true, true, false, true,
       A::kGeluTanh});
  add({"N333 unaligned, no h_out, dropout", 7, 333, B, B, F, true, false, true, true, false, true, A::kGelu, 0.25,
       false});
  // fp32: fwd warp <= 512, 4 warps <= 2048, 16 warps <= 8192, looped beyond;
  //       bwd warp <= 256, 4 warps <= 1024, 16 warps <= 4096, looped beyond.
  add({"N300 f32 fwd warp / bwd 4 warps", 5, 300, F, F, F, true, true, true, true, false, true});
  add({"N1001 f32 fwd 4 warps / bwd 4 warps, rms", 4, 1001, F, F, F, true, true, true, false, true});
  add({"N2000 f32 fwd 4 warps / bwd 16 warps, gelu", 4, 2000, F, F, F, true, true, true, true, false, false, A::kGelu});
  add({"N4099 f32 fwd 16 warps / bwd looped, dropout", 4, 4099, F, F, F, true, true, true, true, false, true,
       A::kGeluTanh, 0.25});
  if (!quick) {
    add({"N8197 f32 looped both, dropout no residual", 3, 8197, F, F, F, false, true, true, true, false, false, A::kNone,
         0.25});
    add({"N8200 f32 looped rms, unaligned", 3, 8200, F, F, F, true, true, true, true, true, false, A::kNone, 0, false});
  }
  // bf16: fwd warp <= 1024, 4 warps <= 4096, 16 warps <= 16384, looped beyond;
  //       bwd warp <= 512, 4 warps <= 2048, 16 warps <= 8192, looped beyond.
  add({"N777 bf16 fwd warp / bwd 4 warps, fp32 w+h", 5, 777, B, F, F, true, true, true, true, false, true, A::kGelu});
  add({"N3000 bf16 fwd 4 warps / bwd 16 warps, dropout", 3, 3000, B, B, B, true, true, true, true, false, false,
       A::kNone, 0.25});
  if (!quick) {
    add({"N9001 bf16 fwd 16 warps / bwd looped", 3, 9001, B, B, F, true, true, true, true, false, true});
    add({"N16392 bf16 looped both, rms, gelu", 2, 16392, B, B, B, true, false, true, false, true, false, A::kGelu});
  }
  // fp16 with residual and weight in fp16, and with only the residual in fp32: the fp16
  // instantiations the cases above and below leave out.
  add({"N512 fp16 warp, all fp16, gelu, dropout", 6, 512, H, H, H, true, true, true, true, false, true, A::kGelu, 0.25});
  add({"N2500 fp16 4 warps / bwd 16 warps, fp32 h, rms", 5, 2500, H, F, H, true, true, true, false, true});
  // Many partial rows: 20 SMs, so the reduce kernel's 8 row lanes each sum several partials,
  // and the looped backward's column kernel runs 5 row slices. persistent_grid caches each
  // kernel's resident CTA count at its first launch (a real device's SM count never changes), so
  // these run in a child process of their own (fresh statics), and the others after it with 3 SMs.
  std::vector<Case> many;
  {
    Case c{"N64 warp fp16, 100 rows, 20 SMs", 100, 64, H, F, F, true, true, true, true, false, true, A::kGelu, 0.25};
    c.sms = 20;
    many.push_back(c);
    c = Case{"N8195 fp16 fwd 16 warps / bwd looped, 20 SMs", 9, 8195, H, F, F};
    c.sms = 20;
    many.push_back(c);
  }
  std::fflush(stdout);
  const pid_t child = fork();
  if (child == 0) {
    for (const Case& c : many) {
      emu::sms = c.sms;
      run_case(c);
    }
    std::fflush(stdout);
    _exit(failures ? 1 : 0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("BAD the 20-SM cases (child status %d)\n", status);
    ++failures;
  }
  for (const Case& c : cs) {
    emu::sms = c.sms;
    run_case(c);
  }
  std::printf(failures ? "FAILURES: %d\n" : "all ok %d\n", failures);
  return failures != 0;
}
