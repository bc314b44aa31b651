// Runs launch_hadamard (csrc/hadamard: the real launcher and kernels, compiled for the host by
// tests/emulate/run.sh) on CPU threads - one fiber per CUDA thread, warp shuffles and
// __syncthreads as barriers, exact-size dynamic shared memory filled with NaN, under
// ASan/UBSan or ThreadSanitizer - against the CPU twin hadamard_cpu, for fp32, fp16 and bf16.
//   tests/emulate/run.sh hadamard
// (tests/test_hadamard.py::test_cuda_kernels_on_cpu_threads runs it when MMM_EMULATE=1).
//
// Cases: n = 1, 2, 3, 5, 17 (padding to the next power of two, segments shorter than one chunk
// per lane), register-only segments (<= 1024: one warp, 1, 2 or 4 chunks per lane),
// shared-memory segments of every warp count (2048 .. 32768: W = 1 .. 5), one above 48 KB (the
// cudaFuncSetAttribute opt-in) and the largest (32768: 1024 threads); rows of 32768 on clusters
// of two CTAs (kPair), ragged and whole; then, with the reported
// opt-in shared memory lowered to 8 KB (segments of 2048) and 4 KB (segments of 1024, no shared
// memory), the two-pass path: the segment kernel into the fp32 workspace and the column kernel
// for a = 2 .. 32 segments per row; and a row too long for that (an error).
// Row strides are padded (and odd), so a wrong stride or a write past n shows.
//
// Tolerance: none. Kernel and twin do the same butterflies (a + b, a - b) in fp32 in the same
// stage order (H_m = H_a (x) H_b keeps it in the two-pass path), scale once and round once, so
// every output must be bit-identical; padding elements must keep their fill.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_on_cpu.h"
#include "typed_buffer.h"
#include "hadamard/params.h"

using namespace mmm;

static std::mt19937 rng(3);
static int failures = 0;


static void run_case(DType t, int64_t rows, int64_t n, int optin, bool expect_error = false, bool split = true) {
  int64_t m = 1;
  while (m < n) m *= 2;
  emu::optin_smem = optin;
  HadamardParams p;
  p.rows = rows; p.n = n; p.n_pow2 = m; p.dtype = t;
  p.x_row_stride = n + 3; p.y_row_stride = n + 5;
  p.scale = 1.0 / std::sqrt(double(m));
  p.split_rows = split;
  const size_t es = esz(t);
  const Buffer x = random_buffer(rng, t, rows * p.x_row_stride);
  Buffer y_t(size_t(rows * p.y_row_stride) * es, 0x7f), y_k(y_t.bytes, 0x7f);
  p.x = x.data();
  p.y = y_t.data();
  hadamard_cpu(p, 0, rows);
  const size_t wsb = hadamard_cuda_workspace_bytes(p, 0);
  std::vector<float> ws(wsb / 4 + 1, NAN);
  p.y = y_k.data();
  const char* err = launch_hadamard(p, wsb ? ws.data() : nullptr, nullptr);
  std::printf("%-4s rows %" PRId64 " n %6" PRId64 " (m %6" PRId64 ") opt-in smem %6d: %-10s", tname(t), rows, n, m, optin,
              hadamard_cuda_path(p, 0));
  if (expect_error) {
    std::printf(" %s error: %s\n", err ? "ok " : "BAD", err ? err : "none");
    failures += !err;
    return;
  }
  if (err) {
    std::printf(" BAD launch: %s\n", err);
    ++failures;
    return;
  }
  int64_t diff = 0, pad = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < p.y_row_stride; ++j) {
      const size_t o = size_t(r * p.y_row_stride + j) * es;
      if (std::memcmp(y_k.data() + o, y_t.data() + o, es)) (j < n ? diff : pad) += 1;
    }
  const bool ok = diff == 0 && pad == 0;
  std::printf(" %s bitwise: %" PRId64 " differ, %" PRId64 " padding written, max smem %zu\n", ok ? "ok " : "BAD", diff,
              pad, emu::max_smem_used);
  std::fflush(stdout);
  emu::max_smem_used = 0;
  failures += !ok;
}

int main() {
  emu::smem_fill = 0xff;  // shared memory nobody wrote reads as NaN
  const DType F = DType::kFloat32, B = DType::kBFloat16, H = DType::kFloat16;
  const int full = 232448;  // H100's opt-in: one CTA up to 32768 elements
  for (DType t : {F, B})
    for (int64_t n : {1, 2, 3, 5, 17, 200, 256, 257, 600, 1024, 2000, 3000}) run_case(t, 3, n, full);
  run_case(H, 3, 1000, full);
  run_case(H, 2, 8000, full);   // m = 8192: W = 3
  run_case(F, 2, 16384, full);  // 64 KB: above 48 KB
  run_case(B, 2, 20000, full, false, false);  // m = 32768 in one CTA: 1024 threads, 128 KB
  // m = 32768 on clusters of two: ragged (the second half's output cut at 3616) and whole rows,
  // with the grid capped at one cluster (2 CTAs) so that it loops over the rows.
  emu::grid_x_limit = 2;
  run_case(B, 2, 20000, full);
  run_case(F, 3, 32768, full);
  emu::grid_x_limit = int64_t(1) << 30;
  run_case(H, 1, 16385, full);
  // Two-pass: segments of 2048 (8 KB of shared memory) ...
  run_case(F, 2, 2049, 8192);   // a = 2
  run_case(B, 3, 9000, 8192);   // a = 8
  run_case(H, 2, 65536, 8192);  // a = 32
  // ... and of 1024 (registers only).
  run_case(F, 3, 1500, 4096);   // a = 2
  run_case(B, 2, 20000, 4096);  // a = 32
  run_case(F, 1, 32769, 4096, true);  // a = 64: too long
  std::printf(failures ? "FAILURES: %d\n" : "all ok %d\n", failures);
  return failures != 0;
}
