// butterfly_multiply on the CPU: butterfly_cpu_impl.h (the CUDA kernels' twin, a vector of rows
// at a time for real types), compiled per instruction set and picked at run time
// (core/cpu_variants.h).
#include <algorithm>
#include <complex>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "butterfly/params.h"
#include "core/numeric.h"

#define MMM_CPU_IMPL "butterfly/butterfly_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

void butterfly_forward_cpu(const ButterflyParams& p, const CpuParallelFor& pf) { MMM_CPU_VARIANT(forward_cpu, p, pf); }

void butterfly_backward_cpu(const ButterflyParams& p, const CpuParallelFor& pf) {
  MMM_CPU_VARIANT(backward_cpu, p, pf);
}

}  // namespace mmm
