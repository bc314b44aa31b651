// Shared helpers for mmm's standalone C++ benchmarks (bench/cpp/bench_<op>.cu): no torch.
//
//   MMM_CHECK_CUDA(call)        abort (exit 1) with file:line on any CUDA error
//   check_launcher(err, what)   abort when an mmm launcher returns non-null; checks the last error
//   DeviceBuffer                cudaMalloc'd bytes, freed on scope exit
//   fill_random(ptr, n, dtype)  device-side hash-based init (uniform in [lo, hi)); never timed
//   L2Flusher                   cudaMemsetAsync of a buffer >= 4x the L2 (queried) before a run
//   time_median(fn, ...)        CUDA events around fn, L2 flushed before each run, median
//   copy_bandwidth()            cudaMemcpyAsync D2D of 1 GiB, (read + written bytes) / time
//   Args                        --json PATH, --reps N, --quick, --help + op-specific flags
//   JsonWriter                  minimal JSON emitter for the results file
//   print_row / Table           aligned table on stdout
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/common.h"

namespace mmm_bench {

// ---------------------------------------------------------------------------------------------
// Error checking: every failure exits non-zero.
// ---------------------------------------------------------------------------------------------
[[noreturn]] inline void die(const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "%s:%d: error: %s\n", file, line, msg.c_str());
  std::fflush(stdout);
  std::exit(1);
}

#define MMM_CHECK_CUDA(call)                                                                    \
  do {                                                                                          \
    cudaError_t _e = (call);                                                                    \
    if (_e != cudaSuccess)                                                                      \
      ::mmm_bench::die(__FILE__, __LINE__,                                                      \
                       std::string(#call) + " -> " + cudaGetErrorName(_e) + ": " +              \
                           cudaGetErrorString(_e));                                             \
  } while (0)

// A launcher returns nullptr on success or a static message; also catch launch errors.
#define MMM_CHECK_LAUNCH(expr, what)                                                            \
  do {                                                                                          \
    const char* _m = (expr);                                                                    \
    if (_m != nullptr)                                                                          \
      ::mmm_bench::die(__FILE__, __LINE__, std::string(what) + ": launcher: " + _m);            \
    cudaError_t _e = cudaGetLastError();                                                        \
    if (_e != cudaSuccess)                                                                      \
      ::mmm_bench::die(__FILE__, __LINE__,                                                      \
                       std::string(what) + ": launch: " + cudaGetErrorString(_e));              \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Device memory
// ---------------------------------------------------------------------------------------------
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { resize(bytes); }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}

  // Grow to at least `bytes` (contents are not kept).
  void resize(size_t bytes) {
    if (bytes <= n_) return;
    reset();
    MMM_CHECK_CUDA(cudaMalloc(&p_, bytes));
    n_ = bytes;
  }
  void reset() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  template <typename T = void>
  T* get() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

inline size_t dtype_size(mmm::DType t) {
  switch (t) {
    case mmm::DType::kFloat32: return 4;
    case mmm::DType::kFloat16: return 2;
    case mmm::DType::kBFloat16: return 2;
    case mmm::DType::kFloat64: return 8;
  }
  return 0;
}

inline const char* dtype_name(mmm::DType t) {
  switch (t) {
    case mmm::DType::kFloat32: return "fp32";
    case mmm::DType::kFloat16: return "fp16";
    case mmm::DType::kBFloat16: return "bf16";
    case mmm::DType::kFloat64: return "fp64";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Random init: a counter-based hash of (seed, index), so any element is reproducible.
// ---------------------------------------------------------------------------------------------
__host__ __device__ inline uint64_t hash64(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__host__ __device__ inline float hash_uniform(uint64_t seed, uint64_t i, float lo, float hi) {
  const uint32_t r = static_cast<uint32_t>(hash64(seed * 0x632be59bd9b4e019ull + i) >> 40);  // 24 bits
  return lo + (hi - lo) * (static_cast<float>(r) * (1.0f / 16777216.0f));
}

template <typename T>
__device__ inline T from_f32(float v);
template <> __device__ inline float from_f32<float>(float v) { return v; }
template <> __device__ inline __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ inline __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void fill_uniform_kernel(T* p, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    p[i] = from_f32<T>(hash_uniform(seed, i, lo, hi));
}

inline void fill_random(void* p, size_t n, mmm::DType t, uint64_t seed, float lo = -1.f,
                        float hi = 1.f, cudaStream_t s = nullptr) {
  if (n == 0) return;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((n + threads - 1) / threads, 65535u * 8));
  switch (t) {
    case mmm::DType::kFloat32:
      fill_uniform_kernel<<<blocks, threads, 0, s>>>(static_cast<float*>(p), n, seed, lo, hi); break;
    case mmm::DType::kFloat16:
      fill_uniform_kernel<<<blocks, threads, 0, s>>>(static_cast<__half*>(p), n, seed, lo, hi); break;
    case mmm::DType::kBFloat16:
      fill_uniform_kernel<<<blocks, threads, 0, s>>>(static_cast<__nv_bfloat16*>(p), n, seed, lo, hi); break;
    default: die(__FILE__, __LINE__, "fill_random: unsupported dtype");
  }
  MMM_CHECK_CUDA(cudaGetLastError());
}

// Host-side conversions for checking results (bit manipulation; no CUDA host intrinsics needed).
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    const float f = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f; std::memcpy(&f, &u, 4); return f;
}
// Element i of a host copy of a buffer of dtype t, as float.
inline float load_as_float(const void* p, size_t i, mmm::DType t) {
  switch (t) {
    case mmm::DType::kFloat32: return static_cast<const float*>(p)[i];
    case mmm::DType::kFloat16: return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case mmm::DType::kBFloat16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case mmm::DType::kFloat64: return static_cast<float>(static_cast<const double*>(p)[i]);
  }
  return NAN;
}

// A host copy of `bytes` bytes of device memory (synchronous; only the checks use it).
inline std::vector<unsigned char> to_host(const void* dev, size_t bytes) {
  std::vector<unsigned char> h(bytes);
  if (dev && bytes) MMM_CHECK_CUDA(cudaMemcpy(h.data(), dev, bytes, cudaMemcpyDeviceToHost));
  return h;
}

// The check against a CPU twin: max |a - ref| / max |ref| over `count` elements of host copies,
// inf on a non-finite value (a NaN would otherwise compare false and pass).
inline double rel_err(const void* a, const void* ref, size_t count, mmm::DType t) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < count; ++i) {
    const double x = load_as_float(a, i, t), y = load_as_float(ref, i, t);
    if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
    max_diff = std::max(max_diff, std::fabs(x - y));
    max_ref = std::max(max_ref, std::fabs(y));
  }
  return max_diff / (max_ref > 0 ? max_ref : 1.0);
}

// ---------------------------------------------------------------------------------------------
// Device facts, L2 flush, timing
// ---------------------------------------------------------------------------------------------
struct DeviceInfo {
  int id = 0;
  cudaDeviceProp prop{};
  int l2_bytes = 0;
  int runtime_version = 0, driver_version = 0;
};

inline DeviceInfo device_info() {
  DeviceInfo d;
  MMM_CHECK_CUDA(cudaGetDevice(&d.id));
  MMM_CHECK_CUDA(cudaGetDeviceProperties(&d.prop, d.id));
  MMM_CHECK_CUDA(cudaDeviceGetAttribute(&d.l2_bytes, cudaDevAttrL2CacheSize, d.id));
  MMM_CHECK_CUDA(cudaRuntimeGetVersion(&d.runtime_version));
  MMM_CHECK_CUDA(cudaDriverGetVersion(&d.driver_version));
  return d;
}

class L2Flusher {
 public:
  explicit L2Flusher(int l2_bytes) {
    bytes_ = std::max<size_t>(size_t(4) * size_t(std::max(l2_bytes, 0)), size_t(64) << 20);
    buf_.resize(bytes_);
  }
  void flush(cudaStream_t s) {
    MMM_CHECK_CUDA(cudaMemsetAsync(buf_.get(), ++value_ & 0xff, bytes_, s));
  }
  size_t bytes() const { return bytes_; }

 private:
  DeviceBuffer buf_;
  size_t bytes_ = 0;
  int value_ = 0;
};

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int reps = 0;
};

// warmup untimed calls, then `reps` timed calls, each preceded by an L2 flush (if given).
inline Timing time_median(const std::function<void()>& fn, cudaStream_t s, L2Flusher* flusher,
                          int reps, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  MMM_CHECK_CUDA(cudaStreamSynchronize(s));
  std::vector<cudaEvent_t> start(reps), stop(reps);
  for (int i = 0; i < reps; ++i) {
    MMM_CHECK_CUDA(cudaEventCreate(&start[i]));
    MMM_CHECK_CUDA(cudaEventCreate(&stop[i]));
  }
  for (int i = 0; i < reps; ++i) {
    if (flusher) flusher->flush(s);
    MMM_CHECK_CUDA(cudaEventRecord(start[i], s));
    fn();
    MMM_CHECK_CUDA(cudaEventRecord(stop[i], s));
  }
  MMM_CHECK_CUDA(cudaStreamSynchronize(s));
  std::vector<double> ms(reps);
  for (int i = 0; i < reps; ++i) {
    float t = 0;
    MMM_CHECK_CUDA(cudaEventElapsedTime(&t, start[i], stop[i]));
    ms[i] = t;
    MMM_CHECK_CUDA(cudaEventDestroy(start[i]));
    MMM_CHECK_CUDA(cudaEventDestroy(stop[i]));
  }
  std::sort(ms.begin(), ms.end());
  Timing r;
  r.reps = reps;
  r.min_ms = ms.front();
  r.max_ms = ms.back();
  r.median_ms = (reps % 2) ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
  return r;
}

// Device-to-device copy bandwidth in bytes/s, counting bytes read + bytes written.
inline double copy_bandwidth(cudaStream_t s, size_t bytes = size_t(1) << 30, int reps = 20) {
  DeviceBuffer src(bytes), dst(bytes);
  MMM_CHECK_CUDA(cudaMemsetAsync(src.get(), 1, bytes, s));
  Timing t = time_median(
      [&] { MMM_CHECK_CUDA(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, s)); },
      s, nullptr, reps, 3);
  return 2.0 * double(bytes) / (t.median_ms * 1e-3);
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------
struct Args {
  std::string json_path;
  int reps = 0;  // 0: not given (the benchmark picks its default)
  bool quick = false;
  std::vector<std::pair<std::string, std::string>> extra;  // --key value for op-specific flags

  // `known_extra`: op-specific flags that take a value. Unknown flags are an error.
  static Args parse(int argc, char** argv, const std::vector<std::string>& known_extra,
                    const char* usage) {
    Args a;
    for (int i = 1; i < argc; ++i) {
      std::string k = argv[i];
      auto need = [&]() -> std::string {
        if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n%s", k.c_str(), usage); std::exit(2); }
        return argv[++i];
      };
      if (k == "--json") a.json_path = need();
      else if (k == "--reps") a.reps = std::max(1, std::atoi(need().c_str()));
      else if (k == "--quick") a.quick = true;
      else if (k == "-h" || k == "--help") { std::printf("%s", usage); std::exit(0); }
      else if (std::find(known_extra.begin(), known_extra.end(), k) != known_extra.end())
        a.extra.emplace_back(k, need());
      else { std::fprintf(stderr, "unknown argument %s\n%s", k.c_str(), usage); std::exit(2); }
    }
    return a;
  }
  std::string get(const std::string& k, const std::string& def) const {
    for (auto& [key, v] : extra)
      if (key == k) return v;
    return def;
  }
};

// "a,b,c" -> {a, b, c} for a list option such as --n; exits 2 on an item that is not positive or
// that `valid` rejects, naming the option and what `need`s to hold.
inline std::vector<int64_t> parse_list(const std::string& s, const char* option = "--n",
                                       bool (*valid)(long long) = nullptr, const char* need = "") {
  std::vector<int64_t> v;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    long long x = std::atoll(s.substr(i, j - i).c_str());
    if (x <= 0 || (valid && !valid(x))) {
      std::fprintf(stderr, "bad %s %s%s\n", option, s.c_str(), need);
      std::exit(2);
    }
    v.push_back(x);
    i = j + 1;
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// JSON and table output
// ---------------------------------------------------------------------------------------------
inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b;
        } else {
          o += c;
        }
    }
  }
  return o;
}

// One JSON object as "key": value pairs, built in order.
class JsonObject {
 public:
  JsonObject& str(const std::string& k, const std::string& v) { return raw(k, "\"" + json_escape(v) + "\""); }
  JsonObject& num(const std::string& k, double v) {
    if (!std::isfinite(v)) return raw(k, "null");
    char b[64]; std::snprintf(b, sizeof b, "%.9g", v); return raw(k, b);
  }
  JsonObject& integer(const std::string& k, long long v) { return raw(k, std::to_string(v)); }
  JsonObject& boolean(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
  JsonObject& raw(const std::string& k, const std::string& v) {
    body_ += (body_.empty() ? "" : ", ") + ("\"" + json_escape(k) + "\": " + v);
    return *this;
  }
  std::string dump() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

inline std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

inline std::string env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : def;
}

// {"schema", "bench", "env": {...}, "copy_bandwidth_Bps", "records": [...]}; overwrites path.
inline void write_json(const std::string& path, const std::string& bench, const DeviceInfo& d,
                       double copy_bps, const std::vector<JsonObject>& records,
                       const JsonObject& extra_env) {
  if (path.empty()) return;
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) die(__FILE__, __LINE__, "cannot open " + path + " for writing");
  JsonObject env = extra_env;
  env.str("date", utc_now())
      .str("device_name", d.prop.name)
      .str("compute_capability", std::to_string(d.prop.major) + "." + std::to_string(d.prop.minor))
      .integer("sm_count", d.prop.multiProcessorCount)
      .integer("l2_bytes", d.l2_bytes)
      .integer("device_memory_bytes", (long long)d.prop.totalGlobalMem)
      .integer("cuda_runtime_version", d.runtime_version)
      .integer("cuda_driver_version", d.driver_version)
      .str("commit", env_or("MMM_COMMIT", "unknown"));
  std::fprintf(f, "{\"schema\": \"mmm-bench-cpp/1\", \"bench\": \"%s\",\n \"env\": %s,\n",
               json_escape(bench).c_str(), env.dump().c_str());
  std::fprintf(f, " \"copy_bandwidth_Bps\": %.6g,\n \"records\": [\n", copy_bps);
  for (size_t i = 0; i < records.size(); ++i)
    std::fprintf(f, "  %s%s\n", records[i].dump().c_str(), i + 1 < records.size() ? "," : "");
  std::fprintf(f, " ]\n}\n");
  if (std::fclose(f) != 0) die(__FILE__, __LINE__, "error writing " + path);
  std::printf("wrote %zu records to %s\n", records.size(), path.c_str());
}

// Exits 1 with a clear message where no CUDA device can be used (before any other CUDA call).
inline void require_device(const char* prog) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::fprintf(stderr, "%s: no usable CUDA device (%s); this benchmark needs a GPU\n", prog,
                 e != cudaSuccess ? cudaGetErrorString(e) : "no devices");
    std::exit(1);
  }
}

// A measurement's timing fields of its JSON record.
inline JsonObject& add_timing(JsonObject& j, const Timing& t) {
  return j.num("median_us", t.median_ms * 1e3).num("min_us", t.min_ms * 1e3).num("max_us", t.max_ms * 1e3)
      .integer("reps", t.reps);
}

// The line under a bandwidth benchmark's table.
inline void print_copy_bandwidth(double copy_bps) {
  std::printf("copy bandwidth %.0f GB/s (cudaMemcpyAsync D2D 1 GiB, read+write); byte model in the source header\n",
              copy_bps / 1e9);
}

// The JSON "env" fields every binary records about its timing method (add its own after).
inline JsonObject timing_env(int reps, const L2Flusher& flusher) {
  JsonObject e;
  e.integer("reps", reps).integer("l2_flush_bytes", (long long)flusher.bytes())
      .str("timing", "CUDA events, L2 flushed by memset before each run, median");
  return e;
}

// The end of every binary: the JSON written, the stream released, and the exit status (1 when a
// check against the CPU twin failed).
inline int finish(const std::string& json_path, const std::string& bench, const DeviceInfo& d, double copy_bps,
                  const std::vector<JsonObject>& records, const JsonObject& extra_env, cudaStream_t stream,
                  int failures) {
  write_json(json_path, bench, d, copy_bps, records, extra_env);
  MMM_CHECK_CUDA(cudaStreamDestroy(stream));
  if (failures) std::fprintf(stderr, "%s: %d checks against the CPU twin failed\n", bench.c_str(), failures);
  return failures ? 1 : 0;
}

// What every binary sets up first: the GPU (a clear exit where there is none), a non-blocking
// stream, the copy bandwidth it measures itself, the L2 flusher; then the one header line, and at
// the end finish().
struct BenchDevice {
  DeviceInfo dev;
  cudaStream_t stream = nullptr;
  double copy_bps = 0;
  int smem_optin = 0;  // bytes of shared memory a block may opt in to
  L2Flusher flusher;

  explicit BenchDevice(const char* prog) : dev((require_device(prog), device_info())), flusher(dev.l2_bytes) {
    MMM_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    copy_bps = copy_bandwidth(stream);
    MMM_CHECK_CUDA(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev.id));
  }
  BenchDevice(const BenchDevice&) = delete;
  BenchDevice& operator=(const BenchDevice&) = delete;

  // "<GPU> (sm_XY, N SMs, L2 M MB, K KB smem/block) | copy bandwidth | L2 flush | <what> | commit"
  void print_header(const std::string& what = "") const {
    std::printf("%s (sm_%d%d, %d SMs, L2 %d MB, %d KB smem/block) | copy bandwidth %.0f GB/s | L2 flush %zu MB | "
                "%s%scommit %s\n",
                dev.prop.name, dev.prop.major, dev.prop.minor, dev.prop.multiProcessorCount, dev.l2_bytes >> 20,
                smem_optin >> 10, copy_bps / 1e9, flusher.bytes() >> 20, what.c_str(), what.empty() ? "" : " | ",
                env_or("MMM_COMMIT", "unknown").c_str());
  }

  // The JSON "env" fields of the timing method and the device's shared-memory limit.
  JsonObject env(int reps) const {
    JsonObject e = timing_env(reps, flusher);
    e.integer("smem_optin_bytes", smem_optin);
    return e;
  }

  int finish(const std::string& json_path, const std::string& bench, const std::vector<JsonObject>& records,
             const JsonObject& extra_env, int failures) {
    return mmm_bench::finish(json_path, bench, dev, copy_bps, records, extra_env, stream, failures);
  }
};

// Aligned table: set the headers once, add rows of already formatted cells, print at the end.
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print(FILE* f = stdout) const {
    std::vector<size_t> w(headers_.size());
    for (size_t i = 0; i < headers_.size(); ++i) {
      w[i] = headers_[i].size();
      for (auto& r : rows_) if (i < r.size()) w[i] = std::max(w[i], r[i].size());
    }
    auto line = [&](const std::vector<std::string>& r) {
      for (size_t i = 0; i < headers_.size(); ++i)
        std::fprintf(f, "%s%*s", i ? "  " : "", int(w[i]), i < r.size() ? r[i].c_str() : "");
      std::fprintf(f, "\n");
    };
    line(headers_);
    for (size_t i = 0; i < headers_.size(); ++i)
      std::fprintf(f, "%s%s", i ? "  " : "", std::string(w[i], '-').c_str());
    std::fprintf(f, "\n");
    for (auto& r : rows_) line(r);
    std::fflush(f);
  }

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

inline std::string fmtf(const char* spec, double v) {
  char b[64]; std::snprintf(b, sizeof b, spec, v); return b;
}

}  // namespace mmm_bench
