// The fast Walsh-Hadamard transform on the CPU (hadamard_cpu_impl.h), compiled per instruction
// set and picked at run time (core/cpu_variants.h).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/numeric.h"
#include "hadamard/params.h"

#define MMM_CPU_IMPL "hadamard/hadamard_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

void hadamard_cpu(const HadamardParams& p, int64_t row_begin, int64_t row_end) {
  MMM_CPU_VARIANT(hadamard_rows, p, row_begin, row_end);
}

}  // namespace mmm
