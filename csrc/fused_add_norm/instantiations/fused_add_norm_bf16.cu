// x in bf16: every (residual dtype, weight dtype) in {x dtype, fp32}^2 the glue accepts.
#include "fused_add_norm/fused_add_norm_launch_template.cuh"

namespace mmm {
MMM_FUSED_ADD_NORM_INSTANTIATE(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)
MMM_FUSED_ADD_NORM_INSTANTIATE(__nv_bfloat16, __nv_bfloat16, float)
MMM_FUSED_ADD_NORM_INSTANTIATE(__nv_bfloat16, float, __nv_bfloat16)
MMM_FUSED_ADD_NORM_INSTANTIATE(__nv_bfloat16, float, float)
}  // namespace mmm
