// Stand-in for the CUDA header <cuda_fp16.h> in the CPU emulation (tests/emulate/run.sh puts this
// directory on the include path of the PTX drivers).
#pragma once
#include "ptx_on_cpu.h"
