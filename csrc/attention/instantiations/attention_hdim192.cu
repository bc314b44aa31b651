// Head dimension 192 (and every multiple of 8 padded up to it).
#include "attention/attention_launch_template.cuh"

namespace mmm {
MMM_ATTENTION_INSTANTIATE(192)
}  // namespace mmm
