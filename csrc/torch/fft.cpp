// torch glue for fft / ifft / rfft / irfft: schemas, checks, norm modes, allocation, dispatch.
#include <cmath>
#include <optional>
#include <string>

#include "fft/params.h"
#include "torch/glue.h"

namespace mmm {
namespace {

using glue::ScalarType;
using glue::Tensor;

constexpr int64_t kMaxLength = int64_t(1) << 17;  // the CUDA two-pass limit on every sm_80+ GPU

int log2_exact(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

bool is_pow2(int64_t v) { return v >= 1 && (v & (v - 1)) == 0; }

// torch.fft's norm modes as the factor on the unnormalised transform of signal length `len`.
double norm_scale(const std::optional<std::string>& norm, int64_t len, bool inverse, const char* op) {
  const std::string mode = norm.has_value() ? *norm : std::string("backward");
  const double n = double(len);
  if (mode == "backward") return inverse ? 1.0 / n : 1.0;
  if (mode == "forward") return inverse ? 1.0 : 1.0 / n;
  if (mode == "ortho") return 1.0 / std::sqrt(n);
  STD_TORCH_CHECK(false, op, ": norm must be None, \"backward\", \"ortho\" or \"forward\", got \"", mode, "\"");
  return 1.0;
}

void check_device_dtype(const Tensor& x, bool want_complex, const char* op) {
  const ScalarType t = x.scalar_type();
  const ScalarType t32 = want_complex ? ScalarType::ComplexFloat : ScalarType::Float;
  const ScalarType t64 = want_complex ? ScalarType::ComplexDouble : ScalarType::Double;
  const char* n32 = want_complex ? "complex64" : "float32";
  const char* n64 = want_complex ? "complex128" : "float64";
  if (x.is_cuda()) {
    STD_TORCH_CHECK(t == t32, op, ": x must be ", n32, " on CUDA (", n64, " only on the CPU), got ", glue::dtype_str(t));
  } else {
    STD_TORCH_CHECK(x.is_cpu() && (t == t32 || t == t64), op, ": x must be a CPU or CUDA ", n32, " tensor (or ", n64,
                    " on the CPU), got ", glue::dtype_str(t), " on ", glue::device_str(x));
  }
  STD_TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension, got a 0-dim tensor");
}

void check_length(int64_t len, int64_t min_len, const char* what, const char* op, const Tensor& x) {
  STD_TORCH_CHECK(is_pow2(len) && len >= min_len && len <= kMaxLength, op, ": ", what,
                  " must be a power of two between ", min_len, " and ", kMaxLength,
                  " (mmm's FFTs support powers of two only; use torch.fft for other lengths), got ", len,
                  " (x of shape ", glue::shape_str(x), ")");
}

void run(FftParams& p, const Tensor& x, const char* op) {
  if (p.rows == 0) return;
  if (x.is_cuda()) {
#ifdef MMM_WITH_CUDA
    const int32_t device = x.get_device_index();
    torch::stable::accelerator::DeviceGuard guard(device);
    const size_t bytes = fft_cuda_workspace_bytes(p, device);
    std::optional<Tensor> ws;
    if (bytes) ws = glue::empty_like_shape(x, {int64_t((bytes + 7) / 8)}, ScalarType::ComplexFloat);
    const char* err = launch_fft(p, ws ? ws->data_ptr() : nullptr, glue::current_cuda_stream(device));
    STD_TORCH_CHECK(err == nullptr, op, " (CUDA): ", err ? err : "");
#else
    STD_TORCH_CHECK(false, op, ": mmm was built without CUDA kernels");
#endif
  } else {
    const int64_t grain = std::max<int64_t>(1, 16384 >> p.log2n);
    torch::stable::parallel_for(0, p.rows, grain, [&](int64_t b, int64_t e) { fft_rows_cpu(p, b, e); });
  }
}

std::vector<int64_t> with_last(const Tensor& x, int64_t last) {
  std::vector<int64_t> s = glue::sizes_of(x);
  s.back() = last;
  return s;
}

Tensor c2c(const Tensor& x_in, const std::optional<std::string>& norm, bool inverse) {
  const char* op = inverse ? "ifft" : "fft";
  check_device_dtype(x_in, true, op);
  const int64_t n = x_in.size(x_in.dim() - 1);
  check_length(n, 1, "the last dimension of x", op, x_in);
  FftParams p;
  p.kind = FftKind::kC2C;
  p.inverse = inverse;
  p.log2n = log2_exact(n);
  p.scale = norm_scale(norm, n, inverse, op);
  p.fp64 = x_in.scalar_type() == ScalarType::ComplexDouble;
  Tensor y = glue::empty_like_shape(x_in, glue::sizes_of(x_in), x_in.scalar_type());
  p.rows = glue::rows_of(x_in, n);
  if (p.rows == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, n);
  p.x = x.data_ptr();
  p.x_row_stride = x_rs;
  p.y = y.data_ptr();
  p.y_row_stride = n;
  run(p, x, op);
  return y;
}

Tensor fft(const Tensor& x, std::optional<std::string> norm) { return c2c(x, norm, false); }
Tensor ifft(const Tensor& x, std::optional<std::string> norm) { return c2c(x, norm, true); }

Tensor rfft(const Tensor& x_in, std::optional<std::string> norm) {
  const char* op = "rfft";
  check_device_dtype(x_in, false, op);
  const int64_t N = x_in.size(x_in.dim() - 1);
  check_length(N, 2, "the last dimension of x", op, x_in);
  const int64_t n = N / 2;
  FftParams p;
  p.kind = FftKind::kR2C;
  p.log2n = log2_exact(n);
  p.scale = norm_scale(norm, N, false, op);
  p.fp64 = x_in.scalar_type() == ScalarType::Double;
  Tensor y = glue::empty_like_shape(
      x_in, with_last(x_in, n + 1), p.fp64 ? ScalarType::ComplexDouble : ScalarType::ComplexFloat);
  p.rows = glue::rows_of(x_in, N);
  if (p.rows == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, N);
  // The kernels read a row as n complex pairs: it must start on a pair (8/16-byte aligned).
  const size_t align = p.fp64 ? 16 : 8;
  if (x_rs % 2 != 0 || reinterpret_cast<uintptr_t>(x.data_ptr()) % align != 0) {
    x = torch::stable::contiguous(torch::stable::clone(x));
    x_rs = N;
  }
  p.x = x.data_ptr();
  p.x_row_stride = x_rs;
  p.y = y.data_ptr();
  p.y_row_stride = n + 1;
  run(p, x, op);
  return y;
}

Tensor irfft(const Tensor& x_in, std::optional<std::string> norm) {
  const char* op = "irfft";
  check_device_dtype(x_in, true, op);
  const int64_t m = x_in.size(x_in.dim() - 1);
  const int64_t N = 2 * (m - 1);
  check_length(N, 2, "the output length 2 * (x.size(-1) - 1)", op, x_in);
  const int64_t n = N / 2;
  FftParams p;
  p.kind = FftKind::kC2R;
  p.inverse = true;
  p.log2n = log2_exact(n);
  p.scale = norm_scale(norm, N, true, op);
  p.fp64 = x_in.scalar_type() == ScalarType::ComplexDouble;
  Tensor y = glue::empty_like_shape(x_in, with_last(x_in, N), p.fp64 ? ScalarType::Double : ScalarType::Float);
  p.rows = glue::rows_of(x_in, m);
  if (p.rows == 0) return y;
  auto [x, x_rs] = glue::as_rows(x_in, m);
  p.x = x.data_ptr();
  p.x_row_stride = x_rs;
  p.y = y.data_ptr();
  p.y_row_stride = N;
  run(p, x, op);
  return y;
}

}  // namespace
}  // namespace mmm

STABLE_TORCH_LIBRARY_FRAGMENT(mmm, m) {
  m.def("fft(Tensor x, str? norm=None) -> Tensor");
  m.def("ifft(Tensor x, str? norm=None) -> Tensor");
  m.def("rfft(Tensor x, str? norm=None) -> Tensor");
  m.def("irfft(Tensor x, str? norm=None) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(mmm, CPU, m) {
  m.impl("fft", TORCH_BOX(&mmm::fft));
  m.impl("ifft", TORCH_BOX(&mmm::ifft));
  m.impl("rfft", TORCH_BOX(&mmm::rfft));
  m.impl("irfft", TORCH_BOX(&mmm::irfft));
}

#ifdef MMM_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(mmm, CUDA, m) {
  m.impl("fft", TORCH_BOX(&mmm::fft));
  m.impl("ifft", TORCH_BOX(&mmm::ifft));
  m.impl("rfft", TORCH_BOX(&mmm::rfft));
  m.impl("irfft", TORCH_BOX(&mmm::irfft));
}
#endif
