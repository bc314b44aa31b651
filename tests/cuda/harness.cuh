// The shared lines of the tests/cuda/*.cu primitive tests: a CUDA error check that exits, the
// pass/fail counters, and the closing summary. Each test file is one torch-free translation unit:
//   nvcc -std=c++20 -arch=sm_80 --expt-relaxed-constexpr -Icsrc tests/cuda/test_<x>.cu
// (this header is found next to the test file; no extra -I).
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

// Any CUDA runtime error ends the test binary with status 2 (a harness failure, not a test failure).
#define CUDA_OK(call)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

inline int g_passed = 0, g_failed = 0;

// Counts one named check and prints PASS/FAIL with it.
inline void check(bool ok, const char* name, const char* detail = "") {
  if (ok) ++g_passed; else ++g_failed;
  std::printf("%s %s %s\n", ok ? "PASS" : "FAIL", name, detail);
}

// Prints "<prefix>N passed, M failed"; main returns this (1 on any failure).
inline int summary(const char* prefix = "") {
  std::printf("%s%d passed, %d failed\n", prefix, g_passed, g_failed);
  return g_failed ? 1 : 0;
}
