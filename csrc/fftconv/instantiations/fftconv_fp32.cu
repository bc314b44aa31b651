// fftconv row kernels (forward and backward) for float32 storage.
#include "fftconv/fftconv_launch_template.cuh"

namespace mmm::fftconv_launch {
MMM_FFTCONV_INSTANTIATE(float)
}  // namespace mmm::fftconv_launch
