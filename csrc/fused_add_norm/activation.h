// The activations fused after the norm, and their derivatives, for float (CUDA, CPU) and double
// (CPU, so gradcheck sees a true float64 computation).
#pragma once
#include <math.h>
#include "core/common.h"
#include "fused_add_norm/params.h"

namespace mmm {

MMM_HD float erf_(float v) { return erff(v); }
MMM_HD double erf_(double v) { return erf(v); }
MMM_HD float tanh_(float v) { return tanhf(v); }
MMM_HD double tanh_(double v) { return tanh(v); }
MMM_HD float exp_(float v) { return expf(v); }
MMM_HD double exp_(double v) { return exp(v); }

// gelu(y) = y * Phi(y) (erf form);  gelu_tanh(y) = y/2 * (1 + tanh(sqrt(2/pi) * (y + 0.044715 y^3))).
template <typename C>
MMM_HD C activation_fwd(Activation act, C y) {
  if (act == Activation::kGelu) return C(0.5) * y * (C(1) + erf_(y * C(0.70710678118654752440)));
  if (act == Activation::kGeluTanh) {
    const C u = C(0.79788456080286535588) * (y + C(0.044715) * y * y * y);
    return C(0.5) * y * (C(1) + tanh_(u));
  }
  return y;
}

// d act / d y.
template <typename C>
MMM_HD C activation_grad(Activation act, C y) {
  if (act == Activation::kGelu) {
    const C cdf = C(0.5) * (C(1) + erf_(y * C(0.70710678118654752440)));
    const C pdf = exp_(C(-0.5) * y * y) * C(0.39894228040143267794);
    return cdf + y * pdf;
  }
  if (act == Activation::kGeluTanh) {
    const C k = C(0.79788456080286535588);
    const C t = tanh_(k * (y + C(0.044715) * y * y * y));
    return C(0.5) * (C(1) + t) + C(0.5) * y * (C(1) - t * t) * k * (C(1) + C(3 * 0.044715) * y * y);
  }
  return C(1);
}

}  // namespace mmm
