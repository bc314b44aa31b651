// One row per vector lane: the layout of the CPU kernels that vectorise a batch of rows across
// rows (core/fft_cpu_lanes.h, butterfly), as pocketfft and MKL do for a batch of FFTs. Lane l of
// the vector for element j holds row l's element j, so an algorithm's every step is vertical
// arithmetic at the full vector width whatever its access pattern within a row; rows move in and
// out through block transposes (kLanes x kLanes, log2(kLanes) shuffle steps).
//
// Included INSIDE each per-ISA namespace of a CPU kernel (core/cpu_variants.h), after <cstdint>,
// <cstring>, <type_traits>, <utility> and <vector>: so it has no include guard and no includes,
// and a file that includes core/fft_cpu_lanes.h gets it from there.

template <typename T, int kBytes>
struct CpuLanes {
  typedef T V __attribute__((vector_size(kBytes)));
  static constexpr int kLanes = kBytes / int(sizeof(T));

  static V splat(T s) { return V{} + s; }

  // Zeroed storage for `count` P's aligned for vector loads: std::vector of a vector type handed
  // GCC 12's AVX-512 copy 32-byte aligned storage for 64-byte vectors (a segfault on the first
  // aligned store).
  template <typename P>
  struct Buffer {
    std::vector<char> raw;
    P* data;
    explicit Buffer(int64_t count) : raw(size_t(count) * sizeof(P) + kBytes) {
      data = reinterpret_cast<P*>((reinterpret_cast<uintptr_t>(raw.data()) + kBytes - 1) & ~uintptr_t(kBytes - 1));
    }
    Buffer(const Buffer&) = delete;  // data points into raw
    Buffer& operator=(const Buffer&) = delete;
  };

  // dst[j] lane l = x[l * row_stride + j] for j < count, l < used; lanes past used are zero.
  static void load(V* dst, const T* x, int64_t row_stride, int64_t count, int used) {
    int64_t j = 0;
    if (used == kLanes) {
      for (; j + kLanes <= count; j += kLanes) {
        V r[kLanes];
        for (int l = 0; l < kLanes; ++l) std::memcpy(&r[l], x + l * row_stride + j, sizeof(V));
        transpose(r);
        for (int c = 0; c < kLanes; ++c) dst[j + c] = r[c];
      }
    }
    for (int64_t i = j; i < count; ++i)
      for (int l = 0; l < kLanes; ++l) dst[i][l] = l < used ? x[l * row_stride + i] : T(0);
  }

  // y[l * row_stride + j] = src[j] lane l for j < count, l < used.
  static void store(T* y, int64_t row_stride, const V* src, int64_t count, int used) {
    int64_t j = 0;
    if (used == kLanes) {
      for (; j + kLanes <= count; j += kLanes) {
        V r[kLanes];
        for (int c = 0; c < kLanes; ++c) r[c] = src[j + c];
        transpose(r);
        for (int l = 0; l < kLanes; ++l) std::memcpy(y + l * row_stride + j, &r[l], sizeof(V));
      }
    }
    for (int l = 0; l < used; ++l)
      for (int64_t i = j; i < count; ++i) y[l * row_stride + i] = src[i][l];
  }

  // Complex numbers: a vector of real parts and one of imaginary parts.
  struct Complex {
    V re, im;
  };

  // dst[j] = {re, im} of x_l[j] in lane l, for j < count and rows x_l = x + l * row_stride
  // (l < used, lanes past it zero; x, row_stride in reals, a row's complex numbers interleaved).
  static void load_complex(Complex* dst, const T* x, int64_t row_stride, int64_t count, int used) {
    int64_t j = 0;
    if (used == kLanes) {
      for (; j + kLanes <= count; j += kLanes) {
        V re[kLanes], im[kLanes];
        for (int l = 0; l < kLanes; ++l) {
          V v0, v1;
          std::memcpy(&v0, x + l * row_stride + 2 * j, sizeof(V));
          std::memcpy(&v1, x + l * row_stride + 2 * j + kLanes, sizeof(V));
          deinterleave(v0, v1, re[l], im[l]);
        }
        transpose(re);
        transpose(im);
        for (int c = 0; c < kLanes; ++c) dst[j + c] = Complex{re[c], im[c]};
      }
    }
    for (int l = 0; l < kLanes; ++l)
      for (int64_t i = j; i < count; ++i) {
        dst[i].re[l] = l < used ? x[l * row_stride + 2 * i] : T(0);
        dst[i].im[l] = l < used ? x[l * row_stride + 2 * i + 1] : T(0);
      }
  }

  // y_l[k] = scale * src[index ? index[k] : k] in lane l, for k < count (the layout of load_complex).
  static void store_complex(T* y, int64_t row_stride, const Complex* src, const uint32_t* index, int64_t count, int used,
                            T scale) {
    int64_t k = 0;
    if (used == kLanes) {
      for (; k + kLanes <= count; k += kLanes) {
        V re[kLanes], im[kLanes];
        for (int c = 0; c < kLanes; ++c) {
          const Complex& v = src[index ? int64_t(index[k + c]) : k + c];
          re[c] = v.re * scale;
          im[c] = v.im * scale;
        }
        transpose(re);
        transpose(im);
        for (int l = 0; l < kLanes; ++l) {
          V v0, v1;
          interleave(re[l], im[l], v0, v1);
          std::memcpy(y + l * row_stride + 2 * k, &v0, sizeof(V));
          std::memcpy(y + l * row_stride + 2 * k + kLanes, &v1, sizeof(V));
        }
      }
    }
    for (int l = 0; l < used; ++l)
      for (int64_t i = k; i < count; ++i) {
        const Complex& v = src[index ? int64_t(index[i]) : i];
        y[l * row_stride + 2 * i] = v.re[l] * scale;
        y[l * row_stride + 2 * i + 1] = v.im[l] * scale;
      }
  }

  // Shuffle masks (GCC's __builtin_shuffle: index i < kLanes picks a[i], else b[i - kLanes]).
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I M __attribute__((vector_size(kBytes)));
  using Seq = std::make_index_sequence<kLanes>;
  template <size_t... c>
  static M even_mask(std::index_sequence<c...>) { return M{I(2 * c)...}; }
  template <size_t... c>
  static M odd_mask(std::index_sequence<c...>) { return M{I(2 * c + 1)...}; }
  template <size_t... c>  // a[o], b[o], a[o + 1], b[o + 1], ...
  static M zip_mask(std::index_sequence<c...>, int o) { return M{I((c % 2 ? kLanes : 0) + o + c / 2)...}; }
  template <int s, size_t... c>
  static M lo_mask(std::index_sequence<c...>) { return M{I((c & s) ? kLanes + c - s : c)...}; }
  template <int s, size_t... c>
  static M hi_mask(std::index_sequence<c...>) { return M{I((c & s) ? kLanes + c : c + s)...}; }

  // The even and odd elements of the 2 * kLanes in v0, v1 (complex numbers: re and im).
  static void deinterleave(V v0, V v1, V& even, V& odd) {
    even = __builtin_shuffle(v0, v1, even_mask(Seq{}));
    odd = __builtin_shuffle(v0, v1, odd_mask(Seq{}));
  }
  // Its inverse: lo = a0 b0 a1 b1 ..., hi = the second halves.
  static void interleave(V a, V b, V& lo, V& hi) {
    lo = __builtin_shuffle(a, b, zip_mask(Seq{}, 0));
    hi = __builtin_shuffle(a, b, zip_mask(Seq{}, kLanes / 2));
  }

  // r[l][c] -> r[c][l]: at each step s, rows l and l + s swap their s-wide column blocks.
  template <int s = kLanes / 2>
  static void transpose(V* r) {
    for (int l = 0; l < kLanes; ++l)
      if (!(l & s)) {
        const V a = r[l], b = r[l + s];
        r[l] = __builtin_shuffle(a, b, lo_mask<s>(Seq{}));
        r[l + s] = __builtin_shuffle(a, b, hi_mask<s>(Seq{}));
      }
    if constexpr (s > 1) transpose<s / 2>(r);
  }
};
