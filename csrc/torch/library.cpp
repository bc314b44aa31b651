// The mmm op namespace. Each op family adds its schemas with STABLE_TORCH_LIBRARY_FRAGMENT in
// its own csrc/torch/<op>.cpp.
#include "torch/glue.h"

STABLE_TORCH_LIBRARY(mmm, m) {}
