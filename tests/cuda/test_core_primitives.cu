// Each device primitive of csrc/core against a CPU computation of the same thing, so that a
// layout or conversion bug shows up here as one named failure, not as a wrong op output.
// Torch-free; built and run by tests/test_core.py (nvcc + a GPU) and compiled by CI.
//   philox      device Philox4x32-10 == the Random123 known answers == the host twin
//   convert     device fp16/bf16 <-> fp32 == the host twins in core/numeric.h, bit for bit
//   chunks      load_chunk/store_chunk round trips, vector and scalar paths, ragged row ends
//   reductions  warp_sum and row_sum<1|4|16> == exact host sums
//   mma         ldmatrix fragments + mma.sync m16n8k16 (fp16, bf16) == a host matmul, exactly,
//               with B stored [n][k] (ldmatrix) and [k][n] (ldmatrix .trans), and P·V-style A
//               operands packed from accumulators; cp.async copies and zero-fills
//   cluster     (sm_90 only) %cluster_ctarank, the split cluster barrier, cluster_store_u32,
//               cluster_load_u64 and cluster_load_f4: each CTA of a cluster of 4 stores into the
//               next one's shared memory, then reads it back from there
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/cluster.cuh"
#include "core/cuda_utils.cuh"
#include "core/cp_async.cuh"
#include "core/mma.cuh"
#include "core/numeric.h"
#include "core/philox.h"
#include "harness.cuh"

using namespace mmm;

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) { CUDA_OK(cudaMalloc(&ptr, count * sizeof(T) + 64)); }
  ~DeviceBuffer() { cudaFree(ptr); }
  void upload(const std::vector<T>& h) { CUDA_OK(cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    CUDA_OK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

// ---- philox ---------------------------------------------------------------------------------
__global__ void philox_kernel(uint32_t* out, int n, uint64_t seed) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const Philox4 r = philox4x32_10(uint64_t(i) * 0x10001ull, seed);
    for (int w = 0; w < 4; ++w) out[4 * i + w] = r.v[w];
  }
  if (i == 0) {  // Random123's known answers (kat_vectors: counter[4], key[2] -> out[4])
    const Philox4 a = philox4x32_10(Philox4{{0, 0, 0, 0}}, 0, 0);
    const Philox4 b = philox4x32_10(Philox4{{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
    const Philox4 c = philox4x32_10(Philox4{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                    0xa4093822u, 0x299f31d0u);
    for (int w = 0; w < 4; ++w) {
      out[4 * n + w] = a.v[w];
      out[4 * n + 4 + w] = b.v[w];
      out[4 * n + 8 + w] = c.v[w];
    }
  }
}

static void test_philox() {
  const int n = 4096;
  const uint64_t seed = 0x123456789abcdefull;
  DeviceBuffer<uint32_t> d(4 * n + 12);
  philox_kernel<<<(n + 255) / 256, 256>>>(d.ptr, n, seed);
  CUDA_OK(cudaGetLastError());
  const auto got = d.download();
  bool same = true;
  for (int i = 0; i < n && same; ++i) {
    const Philox4 r = philox4x32_10(uint64_t(i) * 0x10001ull, seed);
    for (int w = 0; w < 4; ++w) same &= got[4 * i + w] == r.v[w];
  }
  check(same, "philox device == host twin");
  const uint32_t kat[12] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8, 0x408f276d, 0x41c83b0e,
                            0xa20bc7c6, 0x6d5451fd, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1};
  check(std::memcmp(&got[4 * n], kat, sizeof(kat)) == 0, "philox device == Random123 known answers");
}

// ---- conversions ----------------------------------------------------------------------------
__global__ void widen_kernel(const uint16_t* bits, float* from_half, float* from_bf16, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    from_half[i] = to_f(__ushort_as_half(bits[i]));
    from_bf16[i] = to_f(__ushort_as_bfloat16(bits[i]));
  }
}

__global__ void narrow_kernel(const float* in, uint16_t* to_half, uint16_t* to_bf16, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    to_half[i] = __half_as_ushort(from_f<__half>(in[i]));
    to_bf16[i] = __bfloat16_as_ushort(from_f<__nv_bfloat16>(in[i]));
  }
}

static bool same_float(float a, float b) {  // bitwise, except that any NaN equals any NaN
  return (a != a && b != b) || float_to_bits(a) == float_to_bits(b);
}

static void test_conversions() {
  const int n = 65536;
  std::vector<uint16_t> bits(n);
  for (int i = 0; i < n; ++i) bits[i] = uint16_t(i);
  DeviceBuffer<uint16_t> d_bits(n);
  DeviceBuffer<float> d_h(n), d_b(n);
  d_bits.upload(bits);
  widen_kernel<<<n / 256, 256>>>(d_bits.ptr, d_h.ptr, d_b.ptr, n);
  CUDA_OK(cudaGetLastError());
  const auto wh = d_h.download(), wb = d_b.download();
  bool ok_h = true, ok_b = true;
  for (int i = 0; i < n; ++i) {
    ok_h &= same_float(wh[i], to_float(Half{bits[i]}));
    ok_b &= same_float(wb[i], to_float(BFloat16{bits[i]}));
  }
  check(ok_h, "fp16 -> fp32: all 65536 patterns, device == host");
  check(ok_b, "bf16 -> fp32: all 65536 patterns, device == host");

  // Floats near every rounding decision: each fp16/bf16 value, the midpoints to its neighbours
  // (ties to even), one ulp either side of them, plus overflow/underflow edges and specials.
  std::vector<float> in;
  for (int i = 0; i < n; ++i) {
    for (const float v : {to_float(Half{uint16_t(i)}), to_float(BFloat16{uint16_t(i)})}) {
      if (v != v) continue;
      const uint32_t u = float_to_bits(v);
      for (int64_t delta : {-4097, -4096, -4095, -1, 0, 1, 4095, 4096, 4097, 32767, 32768, 32769})
        in.push_back(bits_to_float(uint32_t(int64_t(u) + delta)));
    }
  }
  for (float v : {65504.f, 65519.f, 65520.f, 65521.f, 1e30f, 5.9604645e-08f, 2.9802322e-08f,
                  2.9802326e-08f, 0.f, -0.f, 1.f / 0.f, -1.f / 0.f})
    in.push_back(v);
  in.push_back(bits_to_float(0x7fc00001u));
  const int m = int(in.size());
  DeviceBuffer<float> d_in(m);
  DeviceBuffer<uint16_t> d_oh(m), d_ob(m);
  d_in.upload(in);
  narrow_kernel<<<(m + 255) / 256, 256>>>(d_in.ptr, d_oh.ptr, d_ob.ptr, m);
  CUDA_OK(cudaGetLastError());
  const auto oh = d_oh.download(), ob = d_ob.download();
  int bad_h = 0, bad_b = 0;
  for (int i = 0; i < m; ++i) {
    const uint16_t hh = from_float<Half>(in[i]).bits, hb = from_float<BFloat16>(in[i]).bits;
    const bool nan_h = (hh & 0x7fff) > 0x7c00 && (oh[i] & 0x7fff) > 0x7c00;
    const bool nan_b = (hb & 0x7fff) > 0x7f80 && (ob[i] & 0x7fff) > 0x7f80;
    if (oh[i] != hh && !nan_h && bad_h++ < 5)
      std::printf("  fp32 -> fp16 of %a (0x%08x): device 0x%04x host 0x%04x\n", in[i], float_to_bits(in[i]), oh[i], hh);
    if (ob[i] != hb && !nan_b && bad_b++ < 5)
      std::printf("  fp32 -> bf16 of %a (0x%08x): device 0x%04x host 0x%04x\n", in[i], float_to_bits(in[i]), ob[i], hb);
  }
  check(bad_h == 0, "fp32 -> fp16 round to nearest even: device == host");
  check(bad_b == 0, "fp32 -> bf16 round to nearest even: device == host");
}

// ---- chunk loads/stores ---------------------------------------------------------------------
// Copies a (rows, n) matrix with row strides through load_chunk -> fp32 -> store_chunk.
template <int kVec, typename U>
__global__ void chunk_copy_kernel(const U* in, int64_t in_stride, U* out, int64_t out_stride,
                                  int64_t rows, int64_t n, bool vec) {
  const int64_t row = blockIdx.x;
  for (int64_t c0 = int64_t(threadIdx.x) * kVec; c0 < n; c0 += int64_t(blockDim.x) * kVec) {
    float v[kVec];
    load_chunk<kVec>(v, in + row * in_stride, c0, n, vec);
    for (int i = 0; i < kVec; ++i)
      if (c0 + i >= n && v[i] != 0.f) v[0] = 12345.f;  // past the row end must read as 0
    store_chunk<kVec>(out + row * out_stride, v, c0, n, vec);
  }
}

template <int kVec, typename U>
static void test_chunks(const char* name) {
  const int64_t rows = 5;
  for (int64_t n : {1, 7, 8, 9, 64, 100, 1000}) {
    for (int offset : {0, 1}) {  // offset 1: rows not 16-byte aligned -> scalar path
      const int64_t stride = ((n + 15) / 16) * 16 + 16;
      std::vector<uint16_t> raw(size_t(rows * stride + offset) * sizeof(U) / 2 + 8);
      for (size_t i = 0; i < raw.size(); ++i) raw[i] = uint16_t((i * 2654435761u) >> 17) & 0x3bff;
      DeviceBuffer<U> d_in(rows * stride + offset + 16), d_out(rows * stride + offset + 16);
      CUDA_OK(cudaMemcpy(d_in.ptr, raw.data(), size_t(rows * stride + offset) * sizeof(U), cudaMemcpyHostToDevice));
      CUDA_OK(cudaMemset(d_out.ptr, 0xff, (rows * stride + offset + 16) * sizeof(U)));
      const bool vec = offset == 0;
      chunk_copy_kernel<kVec, U><<<unsigned(rows), 64>>>(d_in.ptr + offset, stride, d_out.ptr + offset,
                                                         stride, rows, n, vec);
      CUDA_OK(cudaGetLastError());
      std::vector<U> in(rows * stride + offset + 16), out(rows * stride + offset + 16);
      CUDA_OK(cudaMemcpy(in.data(), d_in.ptr, in.size() * sizeof(U), cudaMemcpyDeviceToHost));
      CUDA_OK(cudaMemcpy(out.data(), d_out.ptr, out.size() * sizeof(U), cudaMemcpyDeviceToHost));
      bool ok = true;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < stride; ++j) {
          const size_t at = size_t(offset + r * stride + j);
          if (j < n) ok &= std::memcmp(&in[at], &out[at], sizeof(U)) == 0;
          else {  // nothing past the row end may be written
            U poison;
            std::memset(&poison, 0xff, sizeof(U));
            ok &= std::memcmp(&out[at], &poison, sizeof(U)) == 0;
          }
        }
      char detail[96];
      std::snprintf(detail, sizeof detail, "(n=%lld, %s)", (long long)n, vec ? "128-bit" : "scalar");
      check(ok, name, detail);
    }
  }
}

// ---- reductions -----------------------------------------------------------------------------
template <int kWarps>
__global__ void row_sum_kernel(float* out) {
  __shared__ float smem[kWarps];
  const float v = float((threadIdx.x * 7) % 13) + float(blockIdx.x);
  const float s1 = row_sum<kWarps>(v, smem);
  const float s2 = row_sum<kWarps>(2.f * v, smem);  // reuse of smem right after
  out[blockIdx.x * blockDim.x + threadIdx.x] = s1 + 1000.f * s2;
}

template <int kWarps>
static void test_row_sum() {
  const int threads = 32 * kWarps, blocks = 3;
  DeviceBuffer<float> d(blocks * threads);
  row_sum_kernel<kWarps><<<blocks, threads>>>(d.ptr);
  CUDA_OK(cudaGetLastError());
  const auto got = d.download();
  bool ok = true;
  for (int b = 0; b < blocks; ++b) {
    float s = 0;
    for (int t = 0; t < threads; ++t) s += float((t * 7) % 13) + float(b);
    for (int t = 0; t < threads; ++t) ok &= got[b * threads + t] == s + 1000.f * 2.f * s;
  }
  char name[64];
  std::snprintf(name, sizeof name, "row_sum<%d> == host sum, in every thread", kWarps);
  check(ok, name);
}

// ---- mma ------------------------------------------------------------------------------------
// One warp: C (16x16) = A (16x16, row-major [m][k]) * B where B is stored as [n][k] (16x16), i.e.
// two n8 tiles, through load_a_frag / load_b_frags / mma_m16n8k16, with smem row pitches of 24
// elements (48 bytes: 16-byte aligned rows, like the kernels' padded tiles).
template <typename T>
__global__ void mma_kernel(const float* a, const float* b, float* c) {
  constexpr int kPitch = 24;
  __shared__ __align__(16) T sa[16 * kPitch], sb[16 * kPitch];
  for (int e = threadIdx.x; e < 256; e += 32) {
    sa[(e / 16) * kPitch + e % 16] = from_f<T>(a[e]);
    sb[(e / 16) * kPitch + e % 16] = from_f<T>(b[e]);
  }
  __syncwarp();
  uint32_t fa[4], b_lo[2], b_hi[2];
  load_a_frag(fa, sa, kPitch, 0, 0);
  load_b_frags(b_lo, b_hi, sb, kPitch, 0, 0);
  float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
  mma_m16n8k16<T>(d0, fa, b_lo);
  mma_m16n8k16<T>(d1, fa, b_hi);
  const int g = threadIdx.x / 4, t = threadIdx.x % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    c[row * 16 + col] = d0[i];
    c[row * 16 + 8 + col] = d1[i];
  }
}

// C2 = A * B with B given row-major [k][n] (loaded with .trans), and C3 = (A * B) * B where the
// first product's accumulators become the second's A operand through pack2 (the P·V path).
// Tiles arrive through cp.async; sb gets a zero-filled 17th row that must read back as zeros.
template <typename T>
__global__ void mma_kn_kernel(const T* ga, const T* gb, float* c2, float* c3, int* zero_ok) {
  constexpr int kPitch = 24;
  __shared__ __align__(16) T sa[16 * kPitch], sb[17 * kPitch];
  for (int ch = threadIdx.x; ch < 2 * 16; ch += 32) {  // 16 rows x 2 chunks of 8 elements
    const int r = ch / 2, col = (ch % 2) * 8;
    cp_async_16(sa + r * kPitch + col, ga + r * 16 + col, true);
    cp_async_16(sb + r * kPitch + col, gb + r * 16 + col, true);
  }
  if (threadIdx.x < 2) cp_async_16(sb + 16 * kPitch + threadIdx.x * 8, gb, false);
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  uint32_t fa[4], b_lo[2], b_hi[2];
  load_a_frag(fa, sa, kPitch, 0, 0);
  load_b_frags_kn(b_lo, b_hi, sb, kPitch, 0, 0);  // B[k][n]: n-tiles 0 and 8
  float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
  mma_m16n8k16<T>(d0, fa, b_lo);
  mma_m16n8k16<T>(d1, fa, b_hi);
  const int g = threadIdx.x / 4, t = threadIdx.x % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    c2[row * 16 + col] = d0[i];
    c2[row * 16 + 8 + col] = d1[i];
  }
  const uint32_t fp[4] = {pack2<T>(d0[0], d0[1]), pack2<T>(d0[2], d0[3]), pack2<T>(d1[0], d1[1]), pack2<T>(d1[2], d1[3])};
  float e0[4] = {0.f, 0.f, 0.f, 0.f}, e1[4] = {0.f, 0.f, 0.f, 0.f};
  mma_m16n8k16<T>(e0, fp, b_lo);
  mma_m16n8k16<T>(e1, fp, b_hi);
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    c3[row * 16 + col] = e0[i];
    c3[row * 16 + 8 + col] = e1[i];
  }
  if (threadIdx.x == 0) {
    int ok = 1;
    for (int j = 0; j < 16; ++j) ok &= to_f(sb[16 * kPitch + j]) == 0.f;
    *zero_ok = ok;
  }
}

template <typename T>
static void test_mma_kn(const char* name) {
  // Entries in {-1, 0, 1}: A*B stays within +-16 and (A*B)*B within +-256, exact in fp16/bf16.
  std::vector<float> a(256), b(256), c2(256, 0.f), c3(256, 0.f);
  for (int i = 0; i < 256; ++i) {
    a[i] = float(int((i * 29u + 3u) % 3) - 1);
    b[i] = float(int((i * 41u + 7u) % 3) - 1);
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n)
      for (int k = 0; k < 16; ++k) c2[m * 16 + n] += a[m * 16 + k] * b[k * 16 + n];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n)
      for (int k = 0; k < 16; ++k) c3[m * 16 + n] += c2[m * 16 + k] * b[k * 16 + n];
  // cp.async reads global memory: the operands go up already in T (host twins convert).
  std::vector<uint16_t> ha(256), hb(256);
  for (int i = 0; i < 256; ++i) {
    if constexpr (std::is_same_v<T, __half>) {
      ha[i] = from_float<Half>(a[i]).bits;
      hb[i] = from_float<Half>(b[i]).bits;
    } else {
      ha[i] = from_float<BFloat16>(a[i]).bits;
      hb[i] = from_float<BFloat16>(b[i]).bits;
    }
  }
  DeviceBuffer<uint16_t> da(256), db(256);
  DeviceBuffer<float> dc2(256), dc3(256);
  DeviceBuffer<int> dz(1);
  da.upload(ha);
  db.upload(hb);
  mma_kn_kernel<T><<<1, 32>>>(reinterpret_cast<const T*>(da.ptr), reinterpret_cast<const T*>(db.ptr), dc2.ptr,
                              dc3.ptr, dz.ptr);
  CUDA_OK(cudaGetLastError());
  const auto g2 = dc2.download(), g3 = dc3.download();
  int bad = 0;
  for (int i = 0; i < 256; ++i)
    if ((g2[i] != c2[i] || g3[i] != c3[i]) && bad++ < 5)
      std::printf("  [%d][%d]: A*B got %g want %g; (A*B)*B got %g want %g\n", i / 16, i % 16, g2[i], c2[i], g3[i], c3[i]);
  check(bad == 0, name);
  check(dz.download()[0] == 1, "cp.async with src-size 0 zero-fills");
}

template <typename T>
static void test_mma(const char* name) {
  // Small integers: every product and sum is exact in fp32, so the check can be exact.
  std::vector<float> a(256), b(256), want(256, 0.f);
  for (int i = 0; i < 256; ++i) {
    a[i] = float(int((i * 37u + 11u) % 7) - 3);
    b[i] = float(int((i * 53u + 5u) % 5) - 2);
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n)
      for (int k = 0; k < 16; ++k) want[m * 16 + n] += a[m * 16 + k] * b[n * 16 + k];
  DeviceBuffer<float> da(256), db(256), dc(256);
  da.upload(a);
  db.upload(b);
  CUDA_OK(cudaMemset(dc.ptr, 0xff, 256 * sizeof(float)));
  mma_kernel<T><<<1, 32>>>(da.ptr, db.ptr, dc.ptr);
  CUDA_OK(cudaGetLastError());
  const auto got = dc.download();
  int bad = 0;
  for (int i = 0; i < 256; ++i)
    if (got[i] != want[i] && bad++ < 5)
      std::printf("  C[%d][%d]: got %g want %g\n", i / 16, i % 16, got[i], want[i]);
  check(bad == 0, name);
}

// ---- clusters (sm_90) --------------------------------------------------------------------------
// CTA rank r stores r * 1000 + t into word t of CTA (r + 1) % 4's shared array, then (after the
// barrier) reports its own array, its rank, and word t of the next CTA's array read back as
// part of 8 bytes (cluster_load_u64) and of 16 (cluster_load_f4): ((r + 3) % 4) * 1000 + t for
// its own word, r * 1000 + t for the next CTA's.
constexpr int kClusterCtas = 4, kClusterThreads = 128, kClusterOut = 4;
__global__ void cluster_kernel(unsigned* out) {
  __shared__ __align__(16) unsigned words[kClusterThreads];
  const unsigned rank = cluster_ctarank(), t = threadIdx.x, next = (rank + 1) % kClusterCtas;
  words[t] = 0xffffffffu;
  cluster_sync();  // every CTA runs (and has initialised its words) before anyone stores into it
  cluster_store_u32(&words[t], next, rank * 1000 + t);
  cluster_arrive();
  cluster_wait();
  unsigned* o = out + (blockIdx.x * kClusterThreads + t) * kClusterOut;
  o[0] = words[t];
  o[1] = rank;
  const uint64_t pair = cluster_load_u64(&words[t & ~1u], next);
  o[2] = unsigned(pair >> (32 * (t & 1)));
  const float4 quad = cluster_load_f4(reinterpret_cast<const float*>(&words[t & ~3u]), next);
  const float q[4] = {quad.x, quad.y, quad.z, quad.w};
  o[3] = __float_as_uint(q[t & 3]);
  cluster_sync();  // nobody exits while another CTA could still read or store its memory
}

void test_cluster() {
  int device = 0, major = 0;
  CUDA_OK(cudaGetDevice(&device));
  CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 9) {
    std::printf("SKIP cluster primitives (compute capability %d < 9)\n", major);
    return;
  }
  const int blocks = 2 * kClusterCtas;
  DeviceBuffer<unsigned> out(size_t(blocks) * kClusterThreads * kClusterOut);
  const ClusterLaunch launch(blocks, kClusterThreads, 0, nullptr, kClusterCtas);
  CUDA_OK(cudaLaunchKernelEx(&launch.config, cluster_kernel, out.ptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<unsigned> h = out.download();
  bool ranks = true, values = true, loads8 = true, loads16 = true;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < kClusterThreads; ++t) {
      const unsigned r = unsigned(b % kClusterCtas), i = unsigned(b * kClusterThreads + t) * kClusterOut;
      ranks = ranks && h[i + 1] == r;
      values = values && h[i] == ((r + kClusterCtas - 1) % kClusterCtas) * 1000 + unsigned(t);
      loads8 = loads8 && h[i + 2] == r * 1000 + unsigned(t);
      loads16 = loads16 && h[i + 3] == r * 1000 + unsigned(t);
    }
  check(ranks, "cluster_ctarank == blockIdx.x % cluster size");
  check(values, "cluster_store_u32 into the next CTA + cluster barrier: every word from the previous rank");
  check(loads8, "cluster_load_u64 from the next CTA: the words this CTA stored there");
  check(loads16, "cluster_load_f4 from the next CTA: the words this CTA stored there");
}

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device\n");
    return 2;
  }
  test_philox();
  test_conversions();
  test_chunks<8, __half>("load/store_chunk<8, fp16>");
  test_chunks<8, __nv_bfloat16>("load/store_chunk<8, bf16>");
  test_chunks<4, float>("load/store_chunk<4, fp32>");
  test_chunks<8, float>("load/store_chunk<8, fp32> (two 128-bit words)");
  test_row_sum<1>();
  test_row_sum<4>();
  test_row_sum<16>();
  test_mma<__half>("ldmatrix + mma.sync m16n8k16 fp16 == host matmul");
  test_mma<__nv_bfloat16>("ldmatrix + mma.sync m16n8k16 bf16 == host matmul");
  test_mma_kn<__half>("ldmatrix.trans B[k][n] + accumulators as A (P.V path), fp16");
  test_mma_kn<__nv_bfloat16>("ldmatrix.trans B[k][n] + accumulators as A (P.V path), bf16");
  test_cluster();
  CUDA_OK(cudaDeviceSynchronize());
  return summary();
}
