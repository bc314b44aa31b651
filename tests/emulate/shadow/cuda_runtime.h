// Stand-in for the CUDA header <cuda_runtime.h> in the CPU emulation (tests/emulate/run.sh puts this
// directory on the include path of the PTX drivers).
#pragma once
#include "ptx_on_cpu.h"
