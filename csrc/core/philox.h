// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator cuRAND and torch use for dropout. Counter-based means any element's
// random bits are a pure function of (seed, element index): the CPU and CUDA paths draw the same
// mask, and backward regenerates it instead of storing it.
#pragma once
#include "core/common.h"

namespace mmm {

struct Philox4 { uint32_t v[4]; };

MMM_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = uint64_t(a) * b;
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// The full generator: a 128-bit counter under a 64-bit key, 10 rounds.
MMM_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  uint32_t c0 = ctr.v[0], c1 = ctr.v[1], c2 = ctr.v[2], c3 = ctr.v[3];
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Four independent 32-bit words for a 64-bit counter under key `seed`.
MMM_HD Philox4 philox4x32_10(uint64_t ctr, uint64_t seed) {
  return philox4x32_10(Philox4{{uint32_t(ctr), uint32_t(ctr >> 32), 0u, 0u}}, uint32_t(seed),
                       uint32_t(seed >> 32));
}

// Word i of a block, by selects rather than indexing: a runtime index into v would put the
// block in (slow, per-thread) local memory on the GPU.
MMM_HD uint32_t philox_word(const Philox4& b, uint64_t i) {
  return i == 0 ? b.v[0] : i == 1 ? b.v[1] : i == 2 ? b.v[2] : b.v[3];
}

MMM_HD bool dropout_keep(uint64_t seed, uint64_t idx, uint32_t threshold) {
  return philox_word(philox4x32_10(idx >> 2, seed), idx & 3) >= threshold;
}

}  // namespace mmm

namespace mmm {

// Walks a row's elements in order and draws one Philox block per 4 elements instead of one per
// element. idx is the element's row-major index in the (rows, N) problem.
struct DropoutMask {
  uint64_t seed;
  uint32_t threshold;
  uint64_t block = ~uint64_t(0);
  Philox4 bits{};
  MMM_HD bool keep(uint64_t idx) {
    if ((idx >> 2) != block) { block = idx >> 2; bits = philox4x32_10(block, seed); }
    return philox_word(bits, idx & 3) >= threshold;
  }
};

}  // namespace mmm
