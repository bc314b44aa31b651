// fftconv CUDA kernels (fp32 arithmetic whatever the storage type). A row's real length-L signal
// (L = 2n, the next power of two >= 2N) is packed as n complex points z[j] = x[2j] + i x[2j+1]
// in a buffer of n float2 (shared memory when it fits, else a per-CTA slot of global scratch):
//
//   DIF       fft::cta_fft_dif_load: Z = FFT_n(z), bit-reversed order, no permutation pass; its
//             first pass loads z = packed pregate * u, zeros past N (global, once; no load pass)
//   pointwise one thread per bin pair (k, n-k), read at swz(bitrev(k)), swz(bitrev(n-k)):
//             unpack Z into the rfft bins X[k], X[n-k], multiply by k's spectrum, repack for
//             the inverse real transform, write back to the same two slots
//   DIT       fft::cta_fft_dit_store<inverse>: bit-reversed in, natural order out = L * packed
//             result, which its last pass hands to the epilogue y = postgate * (result / L +
//             bias * u) (global, once; no store pass)
//
// Because a pair (k, n-k) is both unpacked and repacked by one thread in registers, the spectrum
// never needs the n+1-th slot or natural order, and the only passes over the buffer are the FFT's.
//
//   fftconv_kspec_kernel     one CTA per channel: rfft(k, L) -> kspec (H, n + 1) float2, natural
//   fftconv_fwd_kernel       one CTA per row (b, h), rows visited channel-major so that the B rows
//                            of a channel share kspec[h] in L2
//   fftconv_fwd_split_kernel (sm_90) a row whose buffer would fill an SM's shared memory alone
//                            (N = 16384: 128 KB) on a cluster of two CTAs of half the buffer each,
//                            so that two rows' CTAs share an SM (see the kernel)
//   fftconv_bwd_kernel       one CTA per (channel, batch chunk): per row rfft(g) and rfft(v) in two
//                            buffers; du / dpregate from irfft(G conj K), dpostgate from
//                            irfft(V K); G conj V summed over the chunk's rows into the CTA's own
//                            fp32 slot of global memory (same thread, same bin, fixed order)
//   fftconv_bwd_split_kernel (sm_90) the same with a row's two buffers split over a cluster of two
//                            CTAs, where they would leave one CTA alone on an SM (see the kernel)
//   fftconv_bwd_finalize     one CTA per channel: sum the chunks' slots in order, irfft -> dk;
//                            dbias from the chunks' partial sums
#pragma once
#ifndef MMM_FFT_HOST_EMULATION  // tests/emulate/fftconv.cpp runs these kernels on CPU threads
#include "core/cuda_utils.cuh"
#define MMM_FFTCONV_DYNAMIC_SMEM(name) extern __shared__ float2 name[]
#else
#define MMM_FFTCONV_DYNAMIC_SMEM(name) float2* name = emu_dynamic_smem()
#endif
#include "core/cluster.cuh"
#include "core/fft.cuh"
#include "fftconv/params.h"

namespace mmm {

struct FFTConvTile {
  static constexpr int kMaxThreads = 512;  // fft.cuh: ~100 registers per thread
  // Threads for an n-point transform: 16 points per thread per CTA pass, at least one warp.
  static int threads(int64_t n) {
    int64_t t = n / 16;
    return int(t < 32 ? 32 : t > kMaxThreads ? kMaxThreads : t);
  }
  // The forward's CTAs where two fit an SM's shared memory (fftconv_fwd_split_kernel's half rows,
  // 2 x 64 KB at N = 16384, and fftconv_fwd_kernel's rows up to N = 8192): at most 256 threads of
  // <= 128 registers, so that two CTAs share an SM's register file too.
  static constexpr int kSplitThreads = 256;
  static int split_threads(int64_t b) { return threads(b) < kSplitThreads ? threads(b) : kSplitThreads; }
};

namespace fftconv_detail {

using fft::cadd;
using fft::cconj;
using fft::cmul;
using fft::csub;

__device__ __forceinline__ float load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void store_any(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// Slot of packed point j / of spectrum bin k after the DIF. A half warp's 16 consecutive bins k
// hit 16 bank pairs; their partners n - k (15 in one aligned group of 16 and one in the next)
// mostly 2-way, which fft::swz's bits-4..7 term (what the warp pass's second layout needs) costs.
template <bool kSw> __device__ __forceinline__ int slot(int j, int log2n) { return fft::swz<kSw>(j, log2n); }
template <bool kSw> __device__ __forceinline__ int bin_slot(int k, int log2n) {
  return fft::swz<kSw>(fft::bit_reverse(k, log2n), log2n);
}

// Z[k], Z[n-k] of a packed real signal -> its rfft bins X[k], X[n-k] (1 <= k <= n/2; k = n-k is
// fine). W = W_L^k. E = (Z[k] + conj Z[n-k]) / 2, O = (Z[k] - conj Z[n-k]) / 2i,
// X[k] = E + W O, X[n-k] = conj(E - W O)  (fft.cuh cta_rfft_post).
__device__ __forceinline__ void unpack_pair(float2 zk, float2 zm, float2 w, float2& xk, float2& xm) {
  const float2 c = cconj(zm);
  const float2 e = make_float2(0.5f * (zk.x + c.x), 0.5f * (zk.y + c.y));
  const float2 d = csub(zk, c);
  const float2 wo = cmul(w, make_float2(0.5f * d.y, -0.5f * d.x));
  xk = cadd(e, wo);
  xm = cconj(csub(e, wo));
}
// The inverse (fft.cuh cta_irfft_pre): bins Y[k], Y[n-k] -> Z'[k], Z'[n-k] with
// s = Y[k] + conj Y[n-k], d = (Y[k] - conj Y[n-k]) conj(W): Z'[k] = s + i d, Z'[n-k] = conj s + i conj d.
// The unnormalised inverse FFT of Z' is L * the packed irfft.
__device__ __forceinline__ void pack_pair(float2 yk, float2 ym, float2 w, float2& zk, float2& zm) {
  const float2 c = cconj(ym);
  const float2 s = cadd(yk, c);
  const float2 d = cmul(csub(yk, c), cconj(w));
  zk = make_float2(s.x - d.y, s.y + d.x);
  zm = make_float2(s.x + d.y, -s.y + d.x);
}
// Bin 0 holds X[0] + i X[n] after the DIF (both real); the packed form of Y[0], Y[n] is
// (Y[0] + Y[n], Y[0] - Y[n]).
__device__ __forceinline__ float2 unpack_dc(float2 z0) { return make_float2(z0.x + z0.y, z0.x - z0.y); }
__device__ __forceinline__ float2 pack_dc(float y0, float yn) { return make_float2(y0 + yn, y0 - yn); }

// Points a thread loads (or, in the epilogues, whose inputs it loads) before it stores any: a
// store right behind its load stalls the warp until the load returns (in-order issue), which
// left one load in flight per warp; with one 128 KB CTA per SM nothing else hides that latency.
constexpr int kLoadBatch = 8;

// buffer[slot(j)] = (f(2j), f(2j+1)), f(t) = 0 for t >= N (the backward's two-buffer loads).
template <bool kSw, typename F>
__device__ __forceinline__ void load_packed(float2* buf, int log2n, int64_t N, F&& f) {
  const int n = 1 << log2n;
  for (int j0 = threadIdx.x; j0 < n; j0 += kLoadBatch * blockDim.x) {
    float2 v[kLoadBatch];
#pragma unroll
    for (int i = 0; i < kLoadBatch; ++i) {
      const int64_t t = 2 * int64_t(j0 + i * blockDim.x);
      v[i] = make_float2(t < N ? f(t) : 0.f, t + 1 < N ? f(t + 1) : 0.f);
    }
#pragma unroll
    for (int i = 0; i < kLoadBatch; ++i)
      if (j0 + i * blockDim.x < n) buf[slot<kSw>(j0 + i * blockDim.x, log2n)] = v[i];
  }
}

// The load of fft::cta_fft_dif_load for a packed real signal: element j = (f(2j), f(2j+1)),
// f(t) = 0 for t >= N (the zero padding: no load).
template <typename F>
__device__ __forceinline__ auto packed_load(int64_t N, F f) {
  return [N, f](int base, int stride, auto& v) {
    constexpr int kN = sizeof(v) / sizeof(v[0]);
#pragma unroll
    for (int m = 0; m < kN; ++m) {
      const int64_t t = 2 * int64_t(base + m * stride);
      v[m] = make_float2(t < N ? f(t) : 0.f, t + 1 < N ? f(t + 1) : 0.f);
    }
  };
}

// The backward's pointwise step, for one row: bin pair (k, m = n - k), k <= n/2, at slots ak, am
// of A (g's spectrum) and bk, bm of B (v's). dk's running sums of the pair, acc[ik] and acc[im],
// become ck, cm (the sums so far; ignored when first) + G conj V; then, in place, A takes dv's
// spectrum G conj K (need_dv) and B z's, V K (need_z). k = 0 is the DC / Nyquist pair, X[0] + i X[n]
// in one slot (its sums at ik and im too).
struct BwdSpectra {
  float2* A;
  float2* B;
  float2* acc;  // nullptr: dk not asked for
  int log2_fft;
  bool first, need_v, need_dv, need_z;

  __device__ __forceinline__ void pair(int k, int ak, int am, int bk, int bm, int ik, int im, float2 kk, float2 km,
                                       float2 ck, float2 cm) const {
    if (k == 0) {
      const float2 g = unpack_dc(A[ak]);
      const float2 v = need_v ? unpack_dc(B[bk]) : make_float2(0.f, 0.f);
      if (acc) {
        const float2 a0 = make_float2(g.x * v.x, 0.f), an = make_float2(g.y * v.y, 0.f);
        acc[ik] = first ? a0 : cadd(ck, a0);
        acc[im] = first ? an : cadd(cm, an);
      }
      if (need_dv) A[ak] = pack_dc(g.x * kk.x, g.y * km.x);
      if (need_z) B[bk] = pack_dc(v.x * kk.x, v.y * km.x);
      return;
    }
    const float2 w = fft::twiddle(k, log2_fft);
    float2 gk, gm, vk = make_float2(0.f, 0.f), vm = vk, zk, zm;
    unpack_pair(A[ak], A[am], w, gk, gm);  // known bank conflict: 2-way (bin_slot)
    if (need_v) unpack_pair(B[bk], B[bm], w, vk, vm);  // known bank conflict: 2-way (bin_slot)
    if (acc) {
      const float2 pk = cmul(gk, cconj(vk)), pm = cmul(gm, cconj(vm));
      acc[ik] = first ? pk : cadd(ck, pk);
      if (im != ik) acc[im] = first ? pm : cadd(cm, pm);
    }
    if (need_dv) {
      pack_pair(cmul(gk, cconj(kk)), cmul(gm, cconj(km)), w, zk, zm);
      A[ak] = zk;
      if (am != ak) A[am] = zm;  // known bank conflict: 2-way (bin_slot)
    }
    if (need_z) {
      pack_pair(cmul(vk, kk), cmul(vm, km), w, zk, zm);
      B[bk] = zk;
      if (bm != bk) B[bm] = zm;  // known bank conflict: 2-way (bin_slot)
    }
  }
};

// Backward task q (channel-major): channel h = q / chunks, the rows b in [b0, b1) of batch chunk
// q % chunks, k's spectrum and the task's slot of dk's partial sums (fftconv_bwd_chunks).
struct BwdTask {
  int64_t h, b0, b1;
  float bias;
  const float2* ks;
  float2* dk;  // n + 1 sums; nullptr: dk not asked for

  __device__ __forceinline__ BwdTask(const FFTConvBwdParams& p, int64_t q, int64_t chunks, int n,
                                     const float2* kspec, float2* dk_part)
      : h(q / chunks),
        b0(q % chunks * p.batch / chunks),
        b1((q % chunks + 1) * p.batch / chunks),
        bias(p.bias ? load_any(p.bias, p.bias_dtype, q / chunks) : 0.f),
        ks(kspec + q / chunks * (n + 1)),
        dk(p.dk ? dk_part + q * (n + 1) : nullptr) {}
};

// The backward's epilogue for one row: its inputs at element t (load), and from them and the
// unnormalised inverses at t (a: dv's, z: z's) the row gradients asked for (store).
template <typename T>
struct BwdRow {
  const T* u;
  const T* pre;   // nullptr: no pregate
  const T* post;  // nullptr: no postgate
  const T* dy;
  T* du;  // nullptr: not asked for, and likewise
  T* dpre;
  T* dpost;
  float bias, inv_len;
  struct In { float u, pre, dy, g; };

  __device__ __forceinline__ float g(int64_t t) const { return post ? to_f(dy[t]) * to_f(post[t]) : to_f(dy[t]); }
  __device__ __forceinline__ float v(int64_t t) const { return pre ? to_f(pre[t]) * to_f(u[t]) : to_f(u[t]); }
  __device__ __forceinline__ In load(int64_t t, bool in) const {
    In v;
    v.u = in ? to_f(u[t]) : 0.f;
    v.pre = in && pre ? to_f(pre[t]) : 1.f;
    v.dy = in ? to_f(dy[t]) : 0.f;
    v.g = in && post ? v.dy * to_f(post[t]) : v.dy;
    return v;
  }
  __device__ __forceinline__ void store(int64_t t, const In& v, float a, float z) const {
    const float dv = a * inv_len;
    if (du) du[t] = from_f<T>(v.pre * dv + bias * v.g);
    if (dpre) dpre[t] = from_f<T>(v.u * dv);
    if (dpost) dpost[t] = from_f<T>(v.dy * (z * inv_len + bias * v.u));
  }
};
template <typename T>
__device__ __forceinline__ BwdRow<T> bwd_row(const FFTConvBwdParams& p, int64_t r, float bias, float inv_len) {
  const auto in = [r](const void* base, int64_t rs) { return base ? static_cast<const T*>(base) + r * rs : nullptr; };
  const auto out = [r, &p](void* base) { return base ? static_cast<T*>(base) + r * p.n : nullptr; };
  return {in(p.u, p.u_rs), in(p.pregate, p.pre_rs), in(p.postgate, p.post_rs), in(p.dy, p.dy_rs),
          out(p.du),       out(p.dpregate),         out(p.dpostgate),         bias, inv_len};
}

// The sum of every thread's v, in thread 0 (a fixed-shape tree: the same bits every run). red:
// a float per warp in shared memory; the caller puts a barrier between this and red's next use.
__device__ __forceinline__ float cta_sum(float v, float* red) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nw ? red[lane] : 0.f;
    v = warp_sum(v);
  }
  return v;
}

// Shared memory, or the CTA's slot of global scratch (n float2 per CTA).
template <bool kSmem> __device__ __forceinline__ float2* buffer(float2* scratch, int log2n) {
  MMM_FFTCONV_DYNAMIC_SMEM(smem_fftconv);
  if constexpr (kSmem) return smem_fftconv;
  else return scratch + (int64_t(blockIdx.x) << log2n);
}

// The split kernels (a row's n-point transforms on a cluster of two CTAs, the four-step with
// a = 2) share these three steps.
// DIF input of CTA k1: the packed points z[j] W_n^(j k1), j < n/2 (z[j + n/2] = 0: the signal's
// N <= n real values pack into j < N/2 <= n/2), which gives the full transform's bins 2k' + k1
// (local bin k' at bin_slot(k', log2n - 1)).
template <class Load>
__device__ __forceinline__ auto split_dif_load(Load load, unsigned k1, int log2n) {
  return [=](int base, int stride, auto& v) {
    load(base, stride, v);
    constexpr int kN = sizeof(v) / sizeof(v[0]);
    if (k1)
#pragma unroll
      for (int m = 0; m < kN; ++m) v[m] = cmul(v[m], fft::twiddle(base + m * stride, log2n));
  };
}
// A bin pair (k, n - k) has one parity, so both are CTA k1's: local pairs kp = 0 .. pairs - 1 hold
// k = 2 kp + k1 and its partner at local bin split_partner (k1 = 0: (kp, b - kp), kp = 0 the DC /
// Nyquist pair, kp = b/2 its own partner; k1 = 1: (kp, b - 1 - kp)), b = n/2.
__device__ __forceinline__ int split_pairs(unsigned k1, int b) { return k1 ? b / 2 : b / 2 + 1; }
__device__ __forceinline__ int split_partner(unsigned k1, int b, int kp) { return k1 ? b - 1 - kp : b - kp; }
// Packed output point j < b of the row's inverse, A_0[j] + W_n^-j A_1[j], from this CTA's A_k1[j]
// at `mine` and the other CTA's at the same offset (distributed shared memory). Both CTAs must
// have finished their inverse (a cluster barrier) before.
__device__ __forceinline__ float2 split_inverse_point(const float2* mine, unsigned k1, int j, int log2n) {
  const uint64_t bits = cluster_load_u64(mine, k1 ^ 1u);
  const float2 own = *mine, other = *reinterpret_cast<const float2*>(&bits);
  return cadd(k1 ? other : own, cmul(k1 ? own : other, fft::twiddle_dir<true>(j, log2n)));
}

}  // namespace fftconv_detail

// kspec[h, k] = rfft(k[h], L)[k], k = 0..n, natural order. gridDim.x CTAs loop over channels.
template <bool kSmem>
__global__ void __launch_bounds__(FFTConvTile::kMaxThreads)
    fftconv_kspec_kernel(const FFTConvParams p, float2* __restrict__ kspec, float2* scratch) {
  using namespace fftconv_detail;
  const int log2n = p.log2_fft - 1, n = 1 << log2n;
  float2* buf = buffer<kSmem>(scratch, log2n);
  for (int64_t h = blockIdx.x; h < p.channels; h += gridDim.x) {
    const int64_t krow = h * p.k_rs;
    const auto k_at = [=](int64_t t) { return load_any(p.k, p.k_dtype, krow + t); };
    fft::cta_fft_dif_load<false, kSmem>(buf, log2n, packed_load(p.n, k_at));
    float2* out = kspec + h * (n + 1);
    for (int k = threadIdx.x; k <= n / 2; k += blockDim.x) {
      if (k == 0) {
        const float2 x = unpack_dc(buf[0]);
        out[0] = make_float2(x.x, 0.f);
        out[n] = make_float2(x.y, 0.f);
      } else {
        const float2 zk = buf[bin_slot<kSmem>(k, log2n)];
        const float2 zm = buf[bin_slot<kSmem>(n - k, log2n)];  // known bank conflict: 2-way (bin_slot)
        float2 xk, xm;
        unpack_pair(zk, zm, fft::twiddle(k, p.log2_fft), xk, xm);
        out[k] = xk;
        out[n - k] = xm;
      }
    }
    __syncthreads();  // the next channel's load overwrites buf
  }
}

// y for every row. Row q (channel-major) = (h = q / B, b = q % B).
template <typename T, bool kSmem>
__global__ void __launch_bounds__(FFTConvTile::kMaxThreads)
    fftconv_fwd_kernel(const FFTConvParams p, const float2* __restrict__ kspec, float2* scratch) {
  using namespace fftconv_detail;
  const int log2n = p.log2_fft - 1, n = 1 << log2n;
  const float inv_len = 1.f / float(p.fft_len());
  float2* buf = buffer<kSmem>(scratch, log2n);
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ pre = static_cast<const T*>(p.pregate);
  const T* __restrict__ post = static_cast<const T*>(p.postgate);
  T* __restrict__ y = static_cast<T*>(p.y);
  const int64_t rows = p.rows();
  for (int64_t q = blockIdx.x; q < rows; q += gridDim.x) {
    const int64_t h = q / p.batch, b = q % p.batch, r = b * p.channels + h;
    const T* ur = u + r * p.u_rs;
    if (pre) {
      const T* pr = pre + r * p.pre_rs;
      const auto v_at = [=](int64_t t) { return to_f(pr[t]) * to_f(ur[t]); };
      fft::cta_fft_dif_load<false, kSmem>(buf, log2n, packed_load(p.n, v_at));
    } else {
      const auto v_at = [=](int64_t t) { return to_f(ur[t]); };
      fft::cta_fft_dif_load<false, kSmem>(buf, log2n, packed_load(p.n, v_at));
    }
    const float2* ks = kspec + h * (n + 1);
    for (int k0 = threadIdx.x; k0 <= n / 2; k0 += kLoadBatch * blockDim.x) {
      float2 kk[kLoadBatch], km[kLoadBatch];  // the kernel's spectrum at k and n - k (L2), loaded first
#pragma unroll
      for (int i = 0; i < kLoadBatch; ++i) {
        const int k = k0 + i * blockDim.x;
        kk[i] = k <= n / 2 ? ks[k] : make_float2(0.f, 0.f);
        km[i] = k <= n / 2 ? ks[n - k] : make_float2(0.f, 0.f);
      }
#pragma unroll
      for (int i = 0; i < kLoadBatch; ++i) {
        const int k = k0 + i * blockDim.x;
        if (k > n / 2) break;
        if (k == 0) {
          const float2 x = unpack_dc(buf[0]);
          buf[0] = pack_dc(x.x * kk[i].x, x.y * km[i].x);
        } else {
          const int sk = bin_slot<kSmem>(k, log2n), sm = bin_slot<kSmem>(n - k, log2n);
          const float2 w = fft::twiddle(k, p.log2_fft);
          float2 xk, xm, zk, zm;
          unpack_pair(buf[sk], buf[sm], w, xk, xm);  // known bank conflict: 2-way (bin_slot)
          pack_pair(cmul(xk, kk[i]), cmul(xm, km[i]), w, zk, zm);
          buf[sk] = zk;
          if (sm != sk) buf[sm] = zm;  // known bank conflict: 2-way (bin_slot)
        }
      }
    }
    // The epilogue is the inverse's last pass: each item's points (those before N) leave as y.
    const float bias = p.bias ? load_any(p.bias, p.bias_dtype, h) : 0.f;
    const T* qr = post ? post + r * p.post_rs : nullptr;
    T* yr = y + r * p.n;
    fft::cta_fft_dit_store<true, kSmem>(buf, log2n, [=](int base, int stride, const auto& v) {
      constexpr int kN = sizeof(v) / sizeof(v[0]), kB = kN < kLoadBatch ? kN : kLoadBatch;
#pragma unroll
      for (int m0 = 0; m0 < kN; m0 += kB) {
        float skip[kB][2], gate[kB][2];  // bias * u and the postgate, loaded first
#pragma unroll
        for (int i = 0; i < kB; ++i)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t t = 2 * int64_t(base + (m0 + i) * stride) + e;
            skip[i][e] = bias != 0.f && t < p.n ? bias * to_f(ur[t]) : 0.f;
            gate[i][e] = qr && t < p.n ? to_f(qr[t]) : 1.f;
          }
#pragma unroll
        for (int i = 0; i < kB; ++i)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t t = 2 * int64_t(base + (m0 + i) * stride) + e;
            if (t < p.n) yr[t] = from_f<T>(((e ? v[m0 + i].y : v[m0 + i].x) * inv_len + skip[i][e]) * gate[i][e]);
          }
      }
    });
    __syncthreads();  // the next row's load overwrites buf
  }
}

// y for every row as fftconv_fwd_kernel computes it, a row's n-point transforms split over a
// cluster of two CTAs (fftconv_launch: where one row's buffer would fill an SM's shared memory
// alone, nothing overlaps its loads with another row's work). The four-step with a = 2:
//   DIF   CTA k1 transforms the b = n/2 points z[j] W_n^(j k1) (split_dif_load): the full
//         transform's bins k = 2k' + k1.
//   pointwise  a bin pair (k, n - k) has one parity, so it is one CTA's (split_pairs): unpacked,
//         multiplied, repacked.
//   DIT   each CTA inverts its bins: A_k1[j] (natural order, unnormalised), j < b.
//   cluster barrier, then the packed output point j < b (all the causal part needs) is
//         A_0[j] + W_n^-j A_1[j] (split_inverse_point, reading the other CTA's A through
//         distributed shared memory): the CTAs take alternate chunks of blockDim.x points, so
//         each gets half of any N, and apply the epilogue.
//   cluster barrier: the other CTA has read this one's buffer before the next row overwrites it.
// The row's inputs are read by both CTAs (the second read mostly from L2: they run together).
template <typename T>
__global__ void __launch_bounds__(FFTConvTile::kSplitThreads, 2)
    fftconv_fwd_split_kernel(const FFTConvParams p, const float2* __restrict__ kspec) {
  using namespace fftconv_detail;
  const int log2n = p.log2_fft - 1, n = 1 << log2n, log2b = log2n - 1, b = n / 2;
  const float inv_len = 1.f / float(p.fft_len());
  float2* buf = buffer<true>(nullptr, log2b);
  const unsigned k1 = cluster_ctarank();
  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ pre = static_cast<const T*>(p.pregate);
  const T* __restrict__ post = static_cast<const T*>(p.postgate);
  T* __restrict__ y = static_cast<T*>(p.y);
  const int64_t rows = p.rows();
  for (int64_t q = blockIdx.x / 2; q < rows; q += gridDim.x / 2) {
    const int64_t h = q / p.batch, bt = q % p.batch, r = bt * p.channels + h;
    const T* ur = u + r * p.u_rs;
    if (pre) {
      const T* pr = pre + r * p.pre_rs;
      const auto v_at = [=](int64_t t) { return to_f(pr[t]) * to_f(ur[t]); };
      fft::cta_fft_dif_load<false, true>(buf, log2b, split_dif_load(packed_load(p.n, v_at), k1, log2n));
    } else {
      const auto v_at = [=](int64_t t) { return to_f(ur[t]); };
      fft::cta_fft_dif_load<false, true>(buf, log2b, split_dif_load(packed_load(p.n, v_at), k1, log2n));
    }
    const float2* ks = kspec + h * (n + 1);
    for (int kp = threadIdx.x; kp < split_pairs(k1, b); kp += blockDim.x) {
      const int k = 2 * kp + int(k1);
      if (k == 0) {
        const float2 x = unpack_dc(buf[0]);
        buf[0] = pack_dc(x.x * ks[0].x, x.y * ks[n].x);
      } else {
        const int sk = bin_slot<true>(kp, log2b), sm = bin_slot<true>(split_partner(k1, b, kp), log2b);
        const float2 w = fft::twiddle(k, p.log2_fft);
        float2 xk, xm, zk, zm;
        unpack_pair(buf[sk], buf[sm], w, xk, xm);  // known bank conflict: 2-way (bin_slot)
        pack_pair(cmul(xk, ks[k]), cmul(xm, ks[n - k]), w, zk, zm);
        buf[sk] = zk;
        if (sm != sk) buf[sm] = zm;  // known bank conflict: 2-way (bin_slot)
      }
    }
    fft::cta_fft_dit<true, true>(buf, log2b);
    cluster_sync();  // both halves inverted
    const float bias = p.bias ? load_any(p.bias, p.bias_dtype, h) : 0.f;
    const T* qr = post ? post + r * p.post_rs : nullptr;
    T* yr = y + r * p.n;
    const int j_end = int((p.n + 1) / 2) < b ? int((p.n + 1) / 2) : b;  // packed points holding t < N
    constexpr int kB = kLoadBatch / 2;  // points whose inputs are loaded before any store (kLoadBatch)
    const int step = 2 * int(blockDim.x);  // this CTA's chunks of points alternate with the other's
    for (int j0 = int(k1 * blockDim.x + threadIdx.x); j0 < j_end; j0 += kB * step) {
      float2 v[kB];
      float skip[kB][2], gate[kB][2];  // bias * u and the postgate
#pragma unroll
      for (int i = 0; i < kB; ++i) {
        const int j = j0 + i * step;
        const bool in = j < j_end;
        v[i] = in ? split_inverse_point(buf + slot<true>(j, log2b), k1, j, log2n) : make_float2(0.f, 0.f);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t t = 2 * int64_t(j) + e;
          skip[i][e] = in && bias != 0.f && t < p.n ? bias * to_f(ur[t]) : 0.f;
          gate[i][e] = in && qr && t < p.n ? to_f(qr[t]) : 1.f;
        }
      }
#pragma unroll
      for (int i = 0; i < kB; ++i) {
        const int j = j0 + i * step;
        if (j >= j_end) break;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t t = 2 * int64_t(j) + e;
          if (t < p.n) yr[t] = from_f<T>(((e ? v[i].y : v[i].x) * inv_len + skip[i][e]) * gate[i][e]);
        }
      }
    }
    cluster_sync();  // the other CTA's reads of this buffer are done before the next row's load
  }
}

// Batch chunks per channel for the backward's dk / dbias partial sums: as few as give about 1024
// (channel, chunk) tasks, enough CTAs for a large GPU; 256 from n = 4096 points up, whose tasks'
// CTAs have 256 threads or more, and where each chunk's partial spectrum (8n bytes, written once
// and read again by the finalize) costs about as much traffic as a row. A function of the shapes
// only, so the summation order does not depend on the GPU's size (the bits still depend on the
// path fftconv_launch picks for the device: split rows transform in another order).
MMM_HD int64_t fftconv_bwd_chunks(const FFTConvParams& p) {
  if (p.batch == 0) return 0;
  const int64_t tasks = p.log2_fft - 1 >= 12 ? 256 : 1024;
  const int64_t want = (tasks + p.channels - 1) / p.channels;
  return want < 1 ? 1 : want > p.batch ? p.batch : want;
}

// Task q (channel-major) = (h = q / chunks, chunk c = q % chunks): rows b in [c B / chunks,
// (c + 1) B / chunks). dk_part: (H * chunks, n + 1) float2; dbias_part: (H * chunks,) float.
// acc_smem: the task's running G conj V sums in shared memory after A and B (n + 1 float2 more),
// written to its dk_part slot once at the end of the task; else they are that slot, read and
// written for every row (16 bytes a bin a row: as much traffic as the row's own data).
template <typename T, bool kSmemA, bool kSmemB>
__global__ void __launch_bounds__(FFTConvTile::kMaxThreads)
    fftconv_bwd_kernel(const FFTConvBwdParams p, const float2* __restrict__ kspec, float2* __restrict__ dk_part,
                       float* __restrict__ dbias_part, float2* scratch, bool acc_smem) {
  using namespace fftconv_detail;
  __shared__ float red[FFTConvTile::kMaxThreads / 32];
  const int log2n = p.log2_fft - 1, n = 1 << log2n;
  const float inv_len = 1.f / float(p.fft_len());
  // Buffer A (g, then dv) and B (v, then z): in shared memory when they fit (A first), else in
  // the CTA's two slots of global scratch (2n float2 per CTA).
  MMM_FFTCONV_DYNAMIC_SMEM(smem_fftconv);
  float2* A = kSmemA ? smem_fftconv : scratch + (int64_t(blockIdx.x) * 2) * n;
  float2* B = kSmemB ? smem_fftconv + n : scratch + (int64_t(blockIdx.x) * 2 + 1) * n;
  const bool need_v = p.dk || p.dpostgate, need_dv = p.du || p.dpregate;
  const int64_t chunks = fftconv_bwd_chunks(p);
  for (int64_t task = blockIdx.x; task < p.channels * chunks; task += gridDim.x) {
    const BwdTask tk(p, task, chunks, n, kspec, dk_part);
    const float2* ks = tk.ks;
    float2* acc = tk.dk && acc_smem ? smem_fftconv + 2 * n : tk.dk;
    float dbias = 0.f;
    for (int64_t b = tk.b0; b < tk.b1; ++b) {
      const BwdRow<T> row = bwd_row<T>(p, b * p.channels + tk.h, tk.bias, inv_len);
      load_packed<kSmemA>(A, log2n, p.n, [&](int64_t t) { return row.g(t); });
      if (p.dbias)
#pragma unroll 8
        for (int64_t t = threadIdx.x; t < p.n; t += blockDim.x) dbias += row.g(t) * to_f(row.u[t]);
      if (need_v) load_packed<kSmemB>(B, log2n, p.n, [&](int64_t t) { return row.v(t); });
      fft::cta_fft_dif<false, kSmemA>(A, log2n);
      if (need_v) fft::cta_fft_dif<false, kSmemB>(B, log2n);
      const bool first = b == tk.b0;
      const BwdSpectra spectra{A, B, acc, p.log2_fft, first, need_v, need_dv, p.dpostgate != nullptr};
      // Four global values per bin pair below, and per element in the epilogue: half batches.
      constexpr int kBatch = kLoadBatch / 2;
      for (int k0 = threadIdx.x; k0 <= n / 2; k0 += kBatch * blockDim.x) {
        // The kernel's spectrum (L2) and this CTA's running G conj V sums at k and n - k, loaded
        // before any store.
        float2 kk[kBatch], km[kBatch], ck[kBatch], cm[kBatch];
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int k = k0 + i * blockDim.x;
          const bool in = k <= n / 2;
          kk[i] = in ? ks[k] : make_float2(0.f, 0.f);
          km[i] = in ? ks[n - k] : make_float2(0.f, 0.f);
          ck[i] = in && acc && !first ? acc[k] : make_float2(0.f, 0.f);
          cm[i] = in && acc && !first ? acc[n - k] : make_float2(0.f, 0.f);
        }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int k = k0 + i * blockDim.x;
          if (k > n / 2) break;
          spectra.pair(k, bin_slot<kSmemA>(k, log2n), bin_slot<kSmemA>(n - k, log2n), bin_slot<kSmemB>(k, log2n),
                       bin_slot<kSmemB>(n - k, log2n), k, n - k, kk[i], km[i], ck[i], cm[i]);
        }
      }
      if (need_dv) fft::cta_fft_dit<true, kSmemA>(A, log2n);
      if (p.dpostgate) fft::cta_fft_dit<true, kSmemB>(B, log2n);
      __syncthreads();  // without either inverse, the pointwise writes above still need a barrier
      for (int j0 = threadIdx.x; (need_dv || row.dpost) && 2 * int64_t(j0) < p.n; j0 += kBatch * blockDim.x) {
        typename BwdRow<T>::In in[kBatch][2];  // loaded first
#pragma unroll
        for (int i = 0; i < kBatch; ++i)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t t = 2 * int64_t(j0 + i * blockDim.x) + e;
            in[i][e] = row.load(t, t < p.n);
          }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int j = j0 + i * blockDim.x;
          const int64_t t0 = 2 * int64_t(j);
          if (t0 >= p.n) break;
          const float2 a = need_dv ? A[slot<kSmemA>(j, log2n)] : make_float2(0.f, 0.f);
          const float2 z = row.dpost ? B[slot<kSmemB>(j, log2n)] : make_float2(0.f, 0.f);
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (t0 + e < p.n) row.store(t0 + e, in[i][e], e ? a.y : a.x, e ? z.y : z.x);
        }
      }
      __syncthreads();  // the next row's loads overwrite A and B
    }
    if (acc != tk.dk)  // the sums leave shared memory once; the next task's DIF barriers protect them
      for (int k = threadIdx.x; k <= n; k += blockDim.x) tk.dk[k] = acc[k];
    if (p.dbias) {
      const float s = cta_sum(dbias, red);
      if (threadIdx.x == 0) dbias_part[task] = s;
      __syncthreads();
    }
  }
}

// fftconv_bwd_kernel with a row's two buffers split over a cluster of two CTAs (fftconv_launch:
// where the row's two buffers would leave its CTA alone on an SM, or would not fit at all: on an
// H100, N = 8192 and 16384), the four-step of fftconv_fwd_split_kernel on both: CTA k1 holds bins
// 2k + k1 of g's and of v's spectrum (A and B, b = n/2 float2 each), so the pointwise products,
// G conj V into dk's running sums included, stay local: those sums of its bins (local index
// (k - k1) / 2, b + 1 float2 after B) stay in its shared memory over the task's rows, and go to
// the task's dk_part slot at its end. After both inverses and a cluster barrier, each CTA
// produces the row gradients at alternate chunks of the points from both CTAs' halves
// (split_inverse_point). dbias: each CTA sums g u over its own chunks of the points; at the end
// of the task CTA 0 adds CTA 1's sum, read through distributed shared memory (the same order
// every run).
template <typename T>
__global__ void __launch_bounds__(FFTConvTile::kMaxThreads)
    fftconv_bwd_split_kernel(const FFTConvBwdParams p, const float2* __restrict__ kspec,
                             float2* __restrict__ dk_part, float* __restrict__ dbias_part) {
  using namespace fftconv_detail;
  __shared__ float red[FFTConvTile::kMaxThreads / 32];
  const int log2n = p.log2_fft - 1, n = 1 << log2n, log2b = log2n - 1, b = n / 2;
  const float inv_len = 1.f / float(p.fft_len());
  MMM_FFTCONV_DYNAMIC_SMEM(smem_fftconv);
  float2* A = smem_fftconv;      // g's bins, then dv's points
  float2* B = smem_fftconv + b;  // v's bins, then z's points
  float2* acc = p.dk ? smem_fftconv + 2 * b : nullptr;  // dk's running sums of this CTA's bins
  const unsigned k1 = cluster_ctarank();
  const bool need_v = p.dk || p.dpostgate, need_dv = p.du || p.dpregate;
  const int j_end = int((p.n + 1) / 2) < b ? int((p.n + 1) / 2) : b;  // packed points holding t < N
  const int64_t chunks = fftconv_bwd_chunks(p);
  for (int64_t task = blockIdx.x / 2; task < p.channels * chunks; task += gridDim.x / 2) {
    const BwdTask tk(p, task, chunks, n, kspec, dk_part);
    const float2* ks = tk.ks;
    float dbias = 0.f;
    for (int64_t bt = tk.b0; bt < tk.b1; ++bt) {
      const BwdRow<T> row = bwd_row<T>(p, bt * p.channels + tk.h, tk.bias, inv_len);
      const auto g_at = [=](int64_t t) { return row.g(t); };
      const auto v_at = [=](int64_t t) { return row.v(t); };
      fft::cta_fft_dif_load<false, true>(A, log2b, split_dif_load(packed_load(p.n, g_at), k1, log2n));
      if (need_v) fft::cta_fft_dif_load<false, true>(B, log2b, split_dif_load(packed_load(p.n, v_at), k1, log2n));
      if (p.dbias)
        for (int64_t t = k1 * blockDim.x + threadIdx.x; t < p.n; t += 2 * blockDim.x) dbias += row.g(t) * to_f(row.u[t]);
      const bool first = bt == tk.b0;
      const BwdSpectra spectra{A, B, acc, p.log2_fft, first, need_v, need_dv, p.dpostgate != nullptr};
      // Four global values per bin pair below, and per element in the epilogue, loaded for kBatch
      // items before any store (kLoadBatch).
      constexpr int kBatch = kLoadBatch / 2;
      const float2 zero = make_float2(0.f, 0.f);
      const int pairs = split_pairs(k1, b);
      for (int kp0 = threadIdx.x; kp0 < pairs; kp0 += kBatch * blockDim.x) {
        float2 kk[kBatch], km[kBatch], ck[kBatch], cm[kBatch];  // k's spectrum, the task's G conj V sums
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int kp = kp0 + i * blockDim.x, k = 2 * kp + int(k1);
          const bool in = kp < pairs;
          kk[i] = in ? ks[k] : zero;
          km[i] = in ? ks[n - k] : zero;
          ck[i] = in && acc && !first ? acc[kp] : zero;
          cm[i] = in && acc && !first ? acc[split_partner(k1, b, kp)] : zero;
        }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int kp = kp0 + i * blockDim.x;
          if (kp >= pairs) break;
          const int partner = split_partner(k1, b, kp);
          const int sk = bin_slot<true>(kp, log2b), sm = bin_slot<true>(partner, log2b);
          spectra.pair(2 * kp + int(k1), sk, sm, sk, sm, kp, partner, kk[i], km[i], ck[i], cm[i]);
        }
      }
      if (need_dv) fft::cta_fft_dit<true, true>(A, log2b);
      if (p.dpostgate) fft::cta_fft_dit<true, true>(B, log2b);
      cluster_sync();  // both CTAs' inverses done (without an inverse: the pointwise writes)
      const int step = 2 * int(blockDim.x);  // this CTA's chunks of points alternate with the other's
      for (int j0 = int(k1 * blockDim.x + threadIdx.x); (need_dv || row.dpost) && j0 < j_end; j0 += kBatch * step) {
        float2 a[kBatch], z[kBatch];  // dv and z at point j (both CTAs' halves)
        typename BwdRow<T>::In in[kBatch][2];
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int j = j0 + i * step;
          const bool here = j < j_end;
          const int sj = slot<true>(here ? j : 0, log2b);
          a[i] = here && need_dv ? split_inverse_point(A + sj, k1, j, log2n) : zero;
          z[i] = here && row.dpost ? split_inverse_point(B + sj, k1, j, log2n) : zero;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t t = 2 * int64_t(j) + e;
            in[i][e] = row.load(t, here && t < p.n);
          }
        }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int j = j0 + i * step;
          if (j >= j_end) break;
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (2 * int64_t(j) + e < p.n) row.store(2 * int64_t(j) + e, in[i][e], e ? a[i].y : a[i].x, e ? z[i].y : z[i].x);
        }
      }
      cluster_sync();  // the other CTA's reads of A and B are done before the next row's loads
    }
    if (acc)  // this CTA's bins k1, k1 + 2, ... up to n; the next task's DIF barriers protect the sums
      for (int i = threadIdx.x; i < (k1 ? b : b + 1); i += blockDim.x) tk.dk[2 * i + k1] = acc[i];
    if (p.dbias) {
      const float s = cta_sum(dbias, red);
      if (k1 == 1 && threadIdx.x == 0) A[0] = make_float2(s, 0.f);  // A is free: behind the row's last barrier
      cluster_sync();
      if (k1 == 0 && threadIdx.x == 0) {
        const uint64_t bits = cluster_load_u64(A, 1);
        dbias_part[task] = s + reinterpret_cast<const float2*>(&bits)->x;
      }
      cluster_sync();  // CTA 0 has read CTA 1's A[0] (and red is free) before the next task
    }
  }
}

// dk[h] = irfft(sum over chunks of dk_part[h, c], L)[:N] / L, dbias[h] = sum over chunks.
template <bool kSmem>
__global__ void __launch_bounds__(FFTConvTile::kMaxThreads)
    fftconv_bwd_finalize_kernel(const FFTConvBwdParams p, const float2* __restrict__ dk_part,
                                const float* __restrict__ dbias_part, float2* scratch) {
  using namespace fftconv_detail;
  const int log2n = p.log2_fft - 1, n = 1 << log2n;
  const float inv_len = 1.f / float(p.fft_len());
  const int64_t chunks = fftconv_bwd_chunks(p);
  float2* buf = buffer<kSmem>(scratch, log2n);
  for (int64_t h = blockIdx.x; h < p.channels; h += gridDim.x) {
    if (p.dbias && threadIdx.x == 0) {
      float s = 0.f;
      for (int64_t c = 0; c < chunks; ++c) s += dbias_part[h * chunks + c];
      store_any(p.dbias, p.bias_dtype, h, s);
    }
    if (!p.dk) continue;
    auto bin = [&](int k) {
      float2 s = make_float2(0.f, 0.f);
      for (int64_t c = 0; c < chunks; ++c) s = cadd(s, dk_part[(h * chunks + c) * (n + 1) + k]);
      return s;
    };
    for (int k = threadIdx.x; k <= n / 2; k += blockDim.x) {
      if (k == 0) {
        buf[0] = pack_dc(bin(0).x, bin(n).x);
      } else {
        const int sk = bin_slot<kSmem>(k, log2n), sm = bin_slot<kSmem>(n - k, log2n);
        float2 zk, zm;
        pack_pair(bin(k), bin(n - k), fft::twiddle(k, p.log2_fft), zk, zm);
        buf[sk] = zk;  // known bank conflict: 2-way (bin_slot)
        if (sm != sk) buf[sm] = zm;  // known bank conflict: 2-way (bin_slot)
      }
    }
    fft::cta_fft_dit<true, kSmem>(buf, log2n);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const int64_t t = 2 * int64_t(j);
      if (t >= p.n) break;
      const float2 v = buf[slot<kSmem>(j, log2n)];
      store_any(p.dk, p.k_dtype, h * p.n + t, v.x * inv_len);
      if (t + 1 < p.n) store_any(p.dk, p.k_dtype, h * p.n + t + 1, v.y * inv_len);
    }
    __syncthreads();
  }
}

}  // namespace mmm
