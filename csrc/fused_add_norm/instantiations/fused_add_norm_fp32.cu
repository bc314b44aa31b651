// x in fp32: every (residual dtype, weight dtype) in {x dtype, fp32}^2 the glue accepts.
#include "fused_add_norm/fused_add_norm_launch_template.cuh"

namespace mmm {
MMM_FUSED_ADD_NORM_INSTANTIATE(float, float, float)
}  // namespace mmm
