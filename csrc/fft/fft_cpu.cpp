// FFT on the CPU: fft_cpu_impl.h (core/fft_cpu.h's DIF, a vector of rows at a time), compiled per
// instruction set and picked at run time (core/cpu_variants.h). The caller parallelises over rows.
#include <algorithm>
#include <complex>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/fft_cpu.h"
#include "fft/params.h"

#define MMM_CPU_IMPL "fft/fft_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

void fft_rows_cpu(const FftParams& p, int64_t row_begin, int64_t row_end) {
  MMM_CPU_VARIANT(fft_rows, p, row_begin, row_end);
}

}  // namespace mmm
