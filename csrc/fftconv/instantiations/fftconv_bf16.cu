// fftconv row kernels (forward and backward) for bfloat16 storage.
#include "fftconv/fftconv_launch_template.cuh"

namespace mmm::fftconv_launch {
MMM_FFTCONV_INSTANTIATE(__nv_bfloat16)
}  // namespace mmm::fftconv_launch
