// The attention kernels' shared-memory primitives (csrc/attention/attention_smem.cuh) against the
// CPU, for every compiled head dim: a (64, kD) tile filled by load_tile_async (cp.async, zero
// past row_limit and head_dim, strided source) and read back through the swizzle by ld_a, ld_b
// and ld_b_kn; every fragment element must land at the (row, col) that core/mma.cuh documents:
//   A:    a[j] = (row0 + g + 8 (j % 2), col0 + 2t + 8 (j / 2)), pairs along the column
//   B:    b[r] of the n8 tile n0 (b_lo) or n0 + 8 (b_hi) = ([n] n0 + g, [k] k0 + 2t + 8r), pairs along k
//   B_kn: the same fragment read from a [k][n] tile with .trans: ([k] k0 + 2t + 8r, [n] n0 + g)
// A layout mistake shows up here as one failing head dim, not as a wrong attention output.
//
//   nvcc -std=c++20 -arch=sm_80 --expt-relaxed-constexpr -Icsrc tests/cuda/test_attention_primitives.cu
// Prints "N passed, M failed"; exit status 1 on any failure.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attention/attention_smem.cuh"
#include "harness.cuh"

using namespace mmm;

constexpr int kRows = 64, kThreads = 128;

__device__ void put_pair(uint16_t* out, int idx, uint32_t v) {
  out[idx] = uint16_t(v & 0xffffu);
  out[idx + 1] = uint16_t(v >> 16);
}

template <int kD>
__global__ void frag_kernel(const uint16_t* src, int64_t row_stride, int64_t row_limit, int64_t head_dim,
                            uint16_t* out_a, uint16_t* out_b, uint16_t* out_kn) {
  using L = AttnSmemLayout<kD>;
  __shared__ __align__(128) uint16_t tile[kRows * kD];
  load_tile_async<L, kRows, kThreads>(tile, src, row_stride, 0, row_limit, head_dim);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const AttnLaneAddr<L> la = lane_addr_a<L>(), lb = lane_addr_b<L>();
  const uint32_t base = smem_addr(tile);
  const int r0 = warp * 16;
  for (int c0 = 0; c0 < kD; c0 += 16) {
    uint32_t a[4];
    ld_a<L>(a, base, la, r0, c0);
    for (int j = 0; j < 4; ++j) put_pair(out_a, (r0 + g + 8 * (j % 2)) * kD + c0 + 2 * t + 8 * (j / 2), a[j]);
    uint32_t lo[2], hi[2];
    ld_b<L>(lo, hi, base, lb, r0, c0);  // n0 = r0, k0 = c0
    for (int r = 0; r < 2; ++r) {
      put_pair(out_b, (r0 + g) * kD + c0 + 2 * t + 8 * r, lo[r]);
      put_pair(out_b, (r0 + 8 + g) * kD + c0 + 2 * t + 8 * r, hi[r]);
    }
    ld_b_kn<L>(lo, hi, base, la, r0, c0);  // k0 = r0, n0 = c0
    for (int r = 0; r < 2; ++r) {
      const int k = r0 + 2 * t + 8 * r;
      out_kn[k * kD + c0 + g] = uint16_t(lo[r] & 0xffffu);
      out_kn[(k + 1) * kD + c0 + g] = uint16_t(lo[r] >> 16);
      out_kn[k * kD + c0 + 8 + g] = uint16_t(hi[r] & 0xffffu);
      out_kn[(k + 1) * kD + c0 + 8 + g] = uint16_t(hi[r] >> 16);
    }
  }
}

template <int kD>
void test_frags(int row_limit, int head_dim) {
  const int stride = kD + 24;  // rows of the source are strided (16-byte aligned)
  std::vector<uint16_t> h_src(size_t(kRows) * stride);
  for (size_t i = 0; i < h_src.size(); ++i) h_src[i] = uint16_t(1 + (i * 7919u) % 30000u);  // never 0
  uint16_t *d_src, *d_out;
  const size_t n = size_t(kRows) * kD;
  CUDA_OK(cudaMalloc(&d_src, h_src.size() * 2));
  CUDA_OK(cudaMalloc(&d_out, 3 * n * 2));
  CUDA_OK(cudaMemcpy(d_src, h_src.data(), h_src.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(d_out, 0xff, 3 * n * 2));
  frag_kernel<kD><<<1, kThreads>>>(d_src, stride, row_limit, head_dim, d_out, d_out + n, d_out + 2 * n);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> h_out(3 * n);
  CUDA_OK(cudaMemcpy(h_out.data(), d_out, 3 * n * 2, cudaMemcpyDeviceToHost));
  const char* names[3] = {"ld_a", "ld_b", "ld_b_kn"};
  for (int which = 0; which < 3; ++which) {
    int bad = 0, first_r = -1, first_c = -1;
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kD; ++c) {
        const uint16_t want = r < row_limit && c < head_dim ? h_src[size_t(r) * stride + c] : 0;
        if (h_out[which * n + size_t(r) * kD + c] != want && bad++ == 0) first_r = r, first_c = c;
      }
    char name[96];
    std::snprintf(name, sizeof name, "%s kD=%d rows<%d cols<%d", names[which], kD, row_limit, head_dim);
    if (bad == 0) {
      ++g_passed;
    } else {
      ++g_failed;
      std::printf("FAIL %s: %d wrong elements, first at (%d, %d)\n", name, bad, first_r, first_c);
    }
  }
  CUDA_OK(cudaFree(d_src));
  CUDA_OK(cudaFree(d_out));
}

template <int kD>
void test_head_dim() {
  test_frags<kD>(kRows, kD);
  test_frags<kD>(37, kD - 8);  // ragged rows and a head dim padded up to kD: zero-filled
}

int main() {
  test_head_dim<32>();
  test_head_dim<64>();
  test_head_dim<96>();
  test_head_dim<128>();
  test_head_dim<192>();
  test_head_dim<256>();
  return summary("attention primitives: ");
}
