// The mmm op namespace. Each op family adds its schemas with STABLE_TORCH_LIBRARY_FRAGMENT in
// its own csrc/torch/<op>.cpp; here only what belongs to none of them.
#include "core/cpu_features.h"
#include "torch/glue.h"

namespace {

// Which instruction-set copy of the CPU kernels runs (core/cpu_features.h), for build_info and
// the tests that run each copy. The tensor only gives the dispatcher a device.
int64_t cpu_variant_op(const torch::stable::Tensor&) { return mmm::cpu_variant(); }

}  // namespace

STABLE_TORCH_LIBRARY(mmm, m) { m.def("_cpu_variant(Tensor like) -> int"); }

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) { m.impl("_cpu_variant", TORCH_BOX(&cpu_variant_op)); }
