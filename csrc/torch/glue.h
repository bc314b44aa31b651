// Helpers shared by the torch glue of every op: the LibTorch stable ABI only (torch >= 2.11),
// so one build serves every later torch.
#pragma once
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/common.h"

#ifdef USE_CUDA
// The one call the 2.11 stable surface lacks: the caller's current CUDA stream
// (torch::stable::accelerator::Stream::nativeHandle() arrives in 2.13). The raw AOTI shim has had
// it since 2.x and is exported by libtorch_cuda. Remove this when the target moves to 2.13.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#endif

namespace mmm::glue {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

inline std::string shape_str(const Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + (t.dim() == 1 ? ",)" : ")");
}

inline const char* dtype_str(ScalarType t) { return torch::headeronly::toString(t); }

inline std::string device_str(const Tensor& t) {
  return t.is_cuda() ? "cuda:" + std::to_string(t.get_device_index()) : std::string("cpu");
}

inline DType to_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return DType::kFloat32;
    case ScalarType::Half: return DType::kFloat16;
    case ScalarType::BFloat16: return DType::kBFloat16;
    case ScalarType::Double: return DType::kFloat64;
    case ScalarType::ComplexFloat: return DType::kComplex64;
    case ScalarType::ComplexDouble: return DType::kComplex128;
    default: STD_TORCH_CHECK(false, "mmm: unsupported dtype ", dtype_str(t));
  }
  return DType::kFloat32;
}

// An input `t` as a (rows, n) matrix with unit column stride: returns the tensor (t itself when
// its leading dims collapse to one row stride, a contiguous copy otherwise) and that row stride.
// Only for inputs: a row stride of 0 (an expanded gradient, say) is fine to read.
inline std::pair<Tensor, int64_t> as_rows(const Tensor& t, int64_t n) {
  const int64_t d = t.dim();
  if (d == 0 || t.numel() == 0) return {t, n};
  bool ok = n == 1 || t.stride(d - 1) == 1;
  int64_t row_stride = n;
  bool have_row_stride = false;
  // Walk the leading dims from the innermost out; size-1 dims carry no constraint.
  int64_t expect = -1;
  for (int64_t i = d - 2; ok && i >= 0; --i) {
    if (t.size(i) == 1) continue;
    if (!have_row_stride) {
      row_stride = t.stride(i);
      have_row_stride = true;
      expect = row_stride * t.size(i);
    } else {
      ok = t.stride(i) == expect;
      expect *= t.size(i);
    }
  }
  if (ok) return {t, row_stride};
  return {torch::stable::contiguous(t), n};
}

inline int64_t rows_of(const Tensor& t, int64_t n) { return n == 0 ? 0 : t.numel() / n; }

inline std::vector<int64_t> sizes_of(const Tensor& t) {
  std::vector<int64_t> s(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) s[i] = t.size(i);
  return s;
}

inline Tensor empty_like_shape(const Tensor& like, const std::vector<int64_t>& sizes,
                               ScalarType dtype) {
  return torch::stable::new_empty(like, sizes, dtype);
}

#ifdef USE_CUDA
inline void* current_cuda_stream(int32_t device_index) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream) == AOTI_TORCH_SUCCESS,
                  "mmm: could not get the current CUDA stream");
  return stream;
}
#endif

}  // namespace mmm::glue
