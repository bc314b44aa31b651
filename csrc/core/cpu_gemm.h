// A register-blocked GEMM micro-kernel for the CPU twins (block_diag_matmul, the fused Monarch
// forward): out (m x n) = A (m x k) * B, with B packed k-major in panels of kNR columns.
//
// Included INSIDE each per-ISA namespace of a CPU kernel (see block_diag_matmul_cpu_impl.h), after
// <algorithm>, <cstring> and <type_traits>: so it has no include guard and no includes, and
// MMM_CPU_VECTOR_BYTES (core/cpu_variants.h) is the vector width this copy is compiled for.
//
// Why: a dot product per output (the first form) loads two operands per FMA and ends in a
// horizontal sum; here a tile of kMR rows x kNR columns stays in vector registers while p runs,
// so each step loads one kNR-wide row of B and kMR scalars of A for 2*kMR vector FMAs.
// Summation order of an output, fixed whatever the tiling and the thread count: p in order,
// kSub at a time into a fresh accumulator, each sub-sum added to the running sum in order (so a
// long reduction, a weight gradient over all tokens, rounds like kSub-long partial sums).

template <typename C>
struct CpuGemm {
  static constexpr int kBytes = MMM_CPU_VECTOR_BYTES;
  typedef C V __attribute__((vector_size(kBytes)));
  typedef C VU __attribute__((vector_size(kBytes), aligned(sizeof(C))));  // an unaligned load
  static constexpr int kLanes = kBytes / int(sizeof(C));
  static constexpr int kNR = 2 * kLanes;  // columns per tile: two vectors
  static constexpr int kMR = 6;           // rows per tile: 12 vector accumulators
  static constexpr int64_t kSub = 64;

  // Elements of B packed for n columns and k reduction elements.
  static int64_t packed_size(int64_t k, int64_t n) { return (n + kNR - 1) / kNR * kNR * k; }
  // Where pack_b puts B(p, j) for k reduction elements.
  static int64_t packed_index(int64_t k, int64_t p, int64_t j) { return (j / kNR * k + p) * kNR + j % kNR; }
  // B(p, j) = b(p, j) for p < k, j < n (zero past n) into `dst` (packed_size(k, n)).
  // p outermost: a source row (a token, in the weight gradient) is read once, whole; whole tiles
  // are plain loops, which vectorise where b reads contiguous columns.
  template <typename Get>
  static void pack_b(C* dst, int64_t k, int64_t n, Get b) {
    const int64_t full = n / kNR, tiles = (n + kNR - 1) / kNR;
    for (int64_t p = 0; p < k; ++p) {
      for (int64_t t = 0; t < full; ++t)
        for (int64_t j = 0; j < kNR; ++j) dst[(t * k + p) * kNR + j] = b(p, t * kNR + j);
      for (int64_t j = 0; full < tiles && j < kNR; ++j)
        dst[(full * k + p) * kNR + j] = full * kNR + j < n ? b(p, full * kNR + j) : C(0);
    }
  }

  // pack_b of B(p, j) = src[p * ld + j]: a whole tile's row is one copy (GCC leaves the
  // general form's 16-element rows scalar on AVX2).
  static void pack_b_rows(C* dst, int64_t k, int64_t n, const C* src, int64_t ld) {
    const int64_t full = n / kNR;
    for (int64_t p = 0; p < k; ++p)
      for (int64_t t = 0; t < full; ++t) std::memcpy(dst + (t * k + p) * kNR, src + p * ld + t * kNR, sizeof(C) * kNR);
    if (full * kNR < n)
      for (int64_t p = 0; p < k; ++p)
        for (int64_t j = 0; j < kNR; ++j)
          dst[(full * k + p) * kNR + j] = full * kNR + j < n ? src[p * ld + full * kNR + j] : C(0);
  }

  // out[i * ldo + j] = sum_p a[i * a_rs + p * a_ps] * B(p, j) for i < m, j < n (accumulate: +=).
  static void run(const C* a, int64_t a_rs, int64_t a_ps, int64_t m, int64_t k, const C* bp, int64_t n, C* out,
                  int64_t ldo, bool accumulate) {
    if (a_ps == 1) run_tiles<true>(a, a_rs, 1, m, k, bp, n, out, ldo, accumulate);
    else run_tiles<false>(a, a_rs, a_ps, m, k, bp, n, out, ldo, accumulate);
  }

 private:
  template <bool kPUnit>
  static void run_tiles(const C* a, int64_t a_rs, int64_t a_ps_, int64_t m, int64_t k, const C* bp, int64_t n,
                        C* out, int64_t ldo, bool accumulate) {
    const int64_t a_ps = kPUnit ? 1 : a_ps_;
    for (int64_t j0 = 0; j0 < n; j0 += kNR) {
      const C* b = bp + j0 / kNR * k * kNR;
      const int64_t nc = std::min<int64_t>(kNR, n - j0);
      for (int64_t i0 = 0; i0 < m; i0 += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, m - i0);
        const C* arow[kMR];  // rows past m repeat the last one; their results are dropped
        for (int r = 0; r < kMR; ++r) arow[r] = a + (i0 + std::min<int64_t>(r, mr - 1)) * a_rs;
        // The first sub-sum is the sum (k = 0: one empty sub-sum): no zeroed array to add it to,
        // which AVX2's 16 registers would hold in memory and clear per tile.
        V sum[kMR][2];
        for (int64_t p0 = 0; p0 < std::max<int64_t>(k, 1); p0 += kSub) {
          V acc[kMR][2] = {};
          const int64_t pe = std::min(k, p0 + kSub);
          for (int64_t p = p0; p < pe; ++p) {
            const V b0 = *reinterpret_cast<const VU*>(b + p * kNR);
            const V b1 = *reinterpret_cast<const VU*>(b + p * kNR + kLanes);
#pragma GCC unroll 6
            for (int r = 0; r < kMR; ++r) {
              const C x = arow[r][p * a_ps];
              acc[r][0] += x * b0;
              acc[r][1] += x * b1;
            }
          }
#pragma GCC unroll 6
          for (int r = 0; r < kMR; ++r) {
            sum[r][0] = p0 == 0 ? acc[r][0] : sum[r][0] + acc[r][0];
            sum[r][1] = p0 == 0 ? acc[r][1] : sum[r][1] + acc[r][1];
          }
        }
        for (int64_t r = 0; r < mr; ++r) {
          C* o = out + (i0 + r) * ldo + j0;
          if (nc == kNR) {  // whole vectors
            VU* ov = reinterpret_cast<VU*>(o);
            ov[0] = accumulate ? V(ov[0]) + sum[r][0] : sum[r][0];
            ov[1] = accumulate ? V(ov[1]) + sum[r][1] : sum[r][1];
          } else {
            C row[kNR];
            std::memcpy(row, &sum[r][0], sizeof(V));
            std::memcpy(row + kLanes, &sum[r][1], sizeof(V));
            for (int64_t j = 0; j < nc; ++j) o[j] = accumulate ? o[j] + row[j] : row[j];
          }
        }
      }
    }
  }
};

struct CpuGemmBf16;  // defined in the AVX-512 copy only; elsewhere a name that templates may carry

#if defined(MMM_CPU_AVX512)
// The same GEMM for bf16 operands on CPUs with AVX512_BF16 (cpu_has_avx512_bf16()): vdpbf16ps
// multiplies a pair of reduction elements per lane and adds both products to the fp32 lane, so a
// step does twice the work of an fp32 FMA, on operands packed as bf16 (half the bytes). The
// products of bf16 numbers are exact in fp32; what changes against CpuGemm<float> is only that
// the two products of a pair are added to the sum together, in the instruction's order (and that
// it flushes denormal inputs and results to zero). Same tiles, same kSub sub-sums, so an output's
// sum is as fixed as there.
//
// Operands hold bf16 bit patterns. A pair q of row i is the two uint16 at a + i * a_rs + q * a_ps
// (reduction elements 2q and 2q + 1, adjacent), so a row-major A with unit stride over the
// reduction is read in place; B is packed by pack_b as [tile][pair][kNR columns][2].
struct CpuGemmBf16 {
  static constexpr int kLanes = 16;
  static constexpr int kNR = 2 * kLanes;
  static constexpr int kMR = 6;
  static constexpr int64_t kSubPairs = CpuGemm<float>::kSub / 2;

  static int64_t pairs(int64_t k) { return (k + 1) / 2; }
  // uint16 elements of B packed for n columns and k reduction elements.
  static int64_t packed_size(int64_t k, int64_t n) { return (n + kNR - 1) / kNR * kNR * 2 * pairs(k); }
  // Where pack_b puts B(p, j) for k reduction elements.
  static int64_t packed_index(int64_t k, int64_t p, int64_t j) {
    return (j / kNR * pairs(k) + p / 2) * kNR * 2 + j % kNR * 2 + p % 2;
  }
  // B(p, j) = b(p, j) (bits) for p < k, j < n (zero past either) into `dst` (packed_size(k, n)).
  template <typename Get>
  static void pack_b(uint16_t* dst, int64_t k, int64_t n, Get b) {
    const int64_t kp = pairs(k), tiles = (n + kNR - 1) / kNR;
    for (int64_t p = 0; p < 2 * kp; ++p)
      for (int64_t t = 0; t < tiles; ++t) {
        uint16_t* d = dst + (t * kp + p / 2) * kNR * 2 + p % 2;
        const int64_t nc = p < k ? std::min<int64_t>(kNR, n - t * kNR) : 0;
        for (int64_t j = 0; j < nc; ++j) d[2 * j] = b(p, t * kNR + j);
        for (int64_t j = nc; j < kNR; ++j) d[2 * j] = 0;
      }
  }

  // out[i * ldo + j] (=|+=) sum_q A pair q (i) . B pair q (j), for i < m, j < n, q < pairs(k).
  // (The attribute adds AVX512_BF16 to the AVX-512 copy's target for this function only.)
  __attribute__((target("avx512bf16,avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
  static void run(const uint16_t* a, int64_t a_rs, int64_t a_ps, int64_t m, int64_t k, const uint16_t* bp,
                  int64_t n, float* out, int64_t ldo, bool accumulate) {
    const int64_t kp = pairs(k);
    for (int64_t j0 = 0; j0 < n; j0 += kNR) {
      const uint16_t* b = bp + j0 / kNR * kp * kNR * 2;
      const int64_t nc = std::min<int64_t>(kNR, n - j0);
      for (int64_t i0 = 0; i0 < m; i0 += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, m - i0);
        const uint16_t* arow[kMR];  // rows past m repeat the last one; their results are dropped
        for (int r = 0; r < kMR; ++r) arow[r] = a + (i0 + std::min<int64_t>(r, mr - 1)) * a_rs;
        __m512 sum[kMR][2];
        for (int r = 0; r < kMR; ++r) sum[r][0] = sum[r][1] = _mm512_setzero_ps();
        for (int64_t q0 = 0; q0 < kp; q0 += kSubPairs) {
          __m512 acc[kMR][2];
          for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
          const int64_t qe = std::min(kp, q0 + kSubPairs);
          for (int64_t q = q0; q < qe; ++q) {
            const __m512i b0 = _mm512_loadu_si512(b + q * kNR * 2);
            const __m512i b1 = _mm512_loadu_si512(b + q * kNR * 2 + 2 * kLanes);
#pragma GCC unroll 6
            for (int r = 0; r < kMR; ++r) {
              int pair;
              std::memcpy(&pair, arow[r] + q * a_ps, sizeof pair);
              const __m512i x = _mm512_set1_epi32(pair);
              acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)x, (__m512bh)b0);
              acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)x, (__m512bh)b1);
            }
          }
#pragma GCC unroll 6
          for (int r = 0; r < kMR; ++r)
            sum[r][0] = _mm512_add_ps(sum[r][0], acc[r][0]), sum[r][1] = _mm512_add_ps(sum[r][1], acc[r][1]);
        }
        for (int64_t r = 0; r < mr; ++r) {
          float* o = out + (i0 + r) * ldo + j0;
          if (nc == kNR) {
            if (accumulate) {
              sum[r][0] = _mm512_add_ps(_mm512_loadu_ps(o), sum[r][0]);
              sum[r][1] = _mm512_add_ps(_mm512_loadu_ps(o + kLanes), sum[r][1]);
            }
            _mm512_storeu_ps(o, sum[r][0]);
            _mm512_storeu_ps(o + kLanes, sum[r][1]);
          } else {
            float row[kNR];
            _mm512_storeu_ps(row, sum[r][0]);
            _mm512_storeu_ps(row + kLanes, sum[r][1]);
            for (int64_t j = 0; j < nc; ++j) o[j] = accumulate ? o[j] + row[j] : row[j];
          }
        }
      }
    }
  }
};
#endif  // MMM_CPU_AVX512
