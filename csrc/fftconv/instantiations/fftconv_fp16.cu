// fftconv row kernels (forward and backward) for float16 storage.
#include "fftconv/fftconv_launch_template.cuh"

namespace mmm::fftconv_launch {
MMM_FFTCONV_INSTANTIATE(__half)
}  // namespace mmm::fftconv_launch
