// Head dimension 96 (and every multiple of 8 padded up to it).
#include "attention/attention_launch_template.cuh"

namespace mmm {
MMM_ATTENTION_INSTANTIATE(96)
}  // namespace mmm
