// GroupNorm's forward and backward on channels-last (N, X, Y, Z, C) fp32 / bf16 tensors, each one
// call: the per-channel sums, the group statistics and coefficients, and the per-channel pass.
//
// Built and loaded by glioseg/models/native_norm.py (g++ -O3 -march=native -fopenmp, cached per
// source, compiler and CPU). Why it exists: the same maths as PyTorch operators and compiled passes
// (fast_norm.py) costs 0.3-0.5 ms of Python, Dynamo and small operators per layer, most of a
// GroupNorm at SegResNet's small levels (64x24^3, 128x12^3), where PyTorch's contiguous kernel
// takes 0.1-0.4 ms. The maths is PyTorch's (aten/src/ATen/native/cpu/group_norm_kernel.cpp):
//   forward   mean, rstd per (n, group) from sum x and sum x^2 (var = E[x^2] - mean^2);
//             y = x * a + b with a = rstd * w, b = bias - mean * a per (n, channel)
//   backward  ds = sum_c w * sum(dy * x), db = sum_c w * sum(dy) per group;
//             c2 = (db * mean - ds) * rstd^3 / M, c3 = -c2 * mean - db * rstd / M;
//             dx = dy * (rstd * w) + x * c2 + c3;  dw = sum_n (sum(dy*x) - mean * sum(dy)) * rstd;
//             db = sum_n sum(dy)
// Arithmetic in fp32; the sums over voxels in fp32 blocks of BLOCK rows, added up in fp64.
// bf16 is read and written as its bits (round to nearest even, NaN kept), so no headers are needed.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>

namespace {

constexpr int64_t BLOCK = 256;   // rows summed in fp32 before adding to the fp64 total
constexpr int64_t MIN_ROW = 32;  // elements a (folded) row should hold for a full vector loop

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  p[i] = v != v ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

// Rows of `fold` neighbouring voxels side by side (a row of fold * C elements), so that narrow
// channel counts still run a full vector loop; `rows` counts folded rows.
struct Shape {
  int64_t n, voxels, channels, groups, fold, rows, width;
};

Shape shape_of(int64_t n, int64_t voxels, int64_t channels, int64_t groups) {
  int64_t fold = 1;
  while (fold * channels < MIN_ROW && voxels % (fold * 2) == 0) fold *= 2;
  return {n, voxels, channels, groups, fold, voxels / fold, fold * channels};
}

// Copies row[0, channels) into the fold - 1 places after it (one folded row of coefficients). The
// coefficients are set per channel, not per element of a folded row: an integer division per element
// (c % channels, ch / per_group) cost ~10 us per backward call at 128 channels, a tenth of a GroupNorm
// at SegResNet's deepest level.
void repeat_row(float* row, int64_t channels, int64_t fold) {
  for (int64_t f = 1; f < fold; ++f) std::memcpy(row + f * channels, row, sizeof(float) * channels);
}

// Sums of g*x and g over rows [r0, r1) into bgx[0, width) and bg (fp32, zeroed here). W > 0 is the
// width known at compile time: the accumulators then stay in registers instead of memory.
template <typename T, int W>
void block_sums(const T* g, const T* x, int64_t r0, int64_t r1, int64_t width, float* bgx, float* bg) {
  if constexpr (W > 0) {
    float ax[W] = {}, a1[W] = {};
    for (int64_t r = r0; r < r1; ++r) {
#pragma omp simd
      for (int c = 0; c < W; ++c) {
        const float gv = load(g, r * W + c);
        ax[c] += gv * load(x, r * W + c);
        a1[c] += gv;
      }
    }
    std::memcpy(bgx, ax, sizeof ax);
    std::memcpy(bg, a1, sizeof a1);
  } else {
    std::fill(bgx, bgx + width, 0.0f);
    std::fill(bg, bg + width, 0.0f);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r * width;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) {
        const float gv = load(g, o + c);
        bgx[c] += gv * load(x, o + c);
        bg[c] += gv;
      }
    }
  }
}

template <typename T>
void any_block_sums(const T* g, const T* x, int64_t r0, int64_t r1, int64_t width, float* bgx, float* bg) {
  switch (width) {  // the widths SegResNet and DALight-3D meet after folding
    case 32: return block_sums<T, 32>(g, x, r0, r1, width, bgx, bg);
    case 64: return block_sums<T, 64>(g, x, r0, r1, width, bgx, bg);
    case 128: return block_sums<T, 128>(g, x, r0, r1, width, bgx, bg);
    default: return block_sums<T, 0>(g, x, r0, r1, width, bgx, bg);
  }
}

// Per channel of sample `s`: sum g*x into gx[c] and sum g into g1[c] (fp64), over all voxels.
template <typename T>
void channel_sums(const T* g, const T* x, const Shape& sh, int64_t s, int threads, double* gx, double* g1) {
  const int64_t width = sh.width, rows = sh.rows;
  const T* gs = g + s * rows * width;
  const T* xs = x + s * rows * width;
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * width, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = rows * t / nt, end = rows * (t + 1) / nt;
    double* mine = partial.data() + static_cast<size_t>(t) * 2 * width;
    std::vector<float> block(2 * width);
    for (int64_t r0 = begin; r0 < end; r0 += BLOCK) {
      any_block_sums(gs, xs, r0, std::min(end, r0 + BLOCK), width, block.data(), block.data() + width);
      for (int64_t c = 0; c < 2 * width; ++c) mine[c] += block[c];
    }
  }
  for (int64_t c = 0; c < sh.channels; ++c) gx[c] = g1[c] = 0.0;
  for (int t = 0; t < threads; ++t)
    for (int64_t c = 0; c < width; ++c) {
      gx[c % sh.channels] += partial[static_cast<size_t>(t) * 2 * width + c];
      g1[c % sh.channels] += partial[static_cast<size_t>(t) * 2 * width + width + c];
    }
}

// out = u * a[c] + v * b[c] + k[c] over rows [r0, r1) (v may be null: out = u * a + k); a, b, k hold
// one (folded) row of coefficients. W > 0: the width known at compile time (coefficients in registers).
template <typename T, int W>
void rows_pass(const T* u, const float* a, const T* v, const float* b, const float* k, T* out, int64_t r0,
               int64_t r1, int64_t width) {
  const int64_t w = W > 0 ? W : width;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * w;
    if (v == nullptr) {
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) store(out, o + c, load(u, o + c) * a[c] + k[c]);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) store(out, o + c, load(u, o + c) * a[c] + load(v, o + c) * b[c] + k[c]);
    }
  }
}

template <typename T>
void channel_pass(const T* u, const float* a, const T* v, const float* b, const float* k, T* out,
                  const Shape& sh, int64_t s, int threads) {
  const int64_t width = sh.width, rows = sh.rows, offset = s * rows * width;
  u += offset;
  out += offset;
  if (v) v += offset;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = rows * t / nt, end = rows * (t + 1) / nt;
    switch (width) {
      case 32: rows_pass<T, 32>(u, a, v, b, k, out, begin, end, width); break;
      case 64: rows_pass<T, 64>(u, a, v, b, k, out, begin, end, width); break;
      case 128: rows_pass<T, 128>(u, a, v, b, k, out, begin, end, width); break;
      default: rows_pass<T, 0>(u, a, v, b, k, out, begin, end, width);
    }
  }
}

template <typename T>
void forward(const T* x, const float* w, const float* bias, T* y, float* mean, float* rstd, int64_t n,
             int64_t voxels, int64_t channels, int64_t groups, double eps, int threads) {
  const Shape sh = shape_of(n, voxels, channels, groups);
  const int64_t per_group = channels / groups;
  const double count = static_cast<double>(voxels * per_group);
  std::vector<double> sq(channels), sum(channels);
  std::vector<float> a(sh.width), k(sh.width);
  for (int64_t s = 0; s < n; ++s) {
    channel_sums(x, x, sh, s, threads, sq.data(), sum.data());
    for (int64_t g = 0; g < groups; ++g) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) { s1 += sum[c]; s2 += sq[c]; }
      const double m = s1 / count, var = std::max(s2 / count - m * m, 0.0);
      mean[s * groups + g] = static_cast<float>(m);
      rstd[s * groups + g] = static_cast<float>(1.0 / std::sqrt(var + eps));
    }
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t ch = g * per_group; ch < (g + 1) * per_group; ++ch) {
        a[ch] = rstd[s * groups + g] * (w ? w[ch] : 1.0f);
        k[ch] = (bias ? bias[ch] : 0.0f) - mean[s * groups + g] * a[ch];
      }
    repeat_row(a.data(), channels, sh.fold);
    repeat_row(k.data(), channels, sh.fold);
    channel_pass<T>(x, a.data(), nullptr, nullptr, k.data(), y, sh, s, threads);
  }
}

template <typename T>
void backward(const T* dy, const T* x, const float* w, const float* mean, const float* rstd, T* dx,
              float* dw, float* db, int64_t n, int64_t voxels, int64_t channels, int64_t groups, int threads) {
  const Shape sh = shape_of(n, voxels, channels, groups);
  const int64_t per_group = channels / groups;
  const double count = static_cast<double>(voxels * per_group);
  std::vector<double> sdx(channels), sd(channels), gw(channels, 0.0), gb(channels, 0.0);
  std::vector<float> a(sh.width), b(sh.width), k(sh.width);
  for (int64_t s = 0; s < n; ++s) {
    channel_sums(dy, x, sh, s, threads, sdx.data(), sd.data());
    for (int64_t g = 0; g < groups; ++g) {
      const double m = mean[s * groups + g], r = rstd[s * groups + g];
      double ds = 0.0, dbias = 0.0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        const double wc = w ? w[c] : 1.0;
        ds += sdx[c] * wc;
        dbias += sd[c] * wc;
        gw[c] += (sdx[c] - m * sd[c]) * r;
        gb[c] += sd[c];
      }
      const double c2 = (dbias * m - ds) * r * r * r / count, c3 = -c2 * m - dbias * r / count;
      for (int64_t ch = g * per_group; ch < (g + 1) * per_group; ++ch) {
        a[ch] = static_cast<float>(r * (w ? w[ch] : 1.0));
        b[ch] = static_cast<float>(c2);
        k[ch] = static_cast<float>(c3);
      }
    }
    for (std::vector<float>* row : {&a, &b, &k}) repeat_row(row->data(), channels, sh.fold);
    if (dx) channel_pass<T>(dy, a.data(), x, b.data(), k.data(), dx, sh, s, threads);
  }
  for (int64_t c = 0; c < channels; ++c) {
    if (dw) dw[c] = static_cast<float>(gw[c]);
    if (db) db[c] = static_cast<float>(gb[c]);
  }
}

}  // namespace

extern "C" {

int glioseg_gn_abi() { return 3; }

// The two calls, the element type an argument (0 fp32, 1 bf16): native_norm.py calls them through
// ctypes, native_norm_op.cpp (the autograd operator built against PyTorch) through two pointers.
void glioseg_gn_forward(int bf16, const void* x, const float* w, const float* b, void* y, float* mean,
                        float* rstd, int64_t n, int64_t voxels, int64_t channels, int64_t groups, double eps,
                        int threads) {
  if (bf16)
    forward<uint16_t>(static_cast<const uint16_t*>(x), w, b, static_cast<uint16_t*>(y), mean, rstd, n, voxels,
                      channels, groups, eps, threads);
  else
    forward<float>(static_cast<const float*>(x), w, b, static_cast<float*>(y), mean, rstd, n, voxels, channels,
                   groups, eps, threads);
}

void glioseg_gn_backward(int bf16, const void* dy, const void* x, const float* w, const float* mean,
                         const float* rstd, void* dx, float* dw, float* db, int64_t n, int64_t voxels,
                         int64_t channels, int64_t groups, int threads) {
  if (bf16)
    backward<uint16_t>(static_cast<const uint16_t*>(dy), static_cast<const uint16_t*>(x), w, mean, rstd,
                       static_cast<uint16_t*>(dx), dw, db, n, voxels, channels, groups, threads);
  else
    backward<float>(static_cast<const float*>(dy), static_cast<const float*>(x), w, mean, rstd,
                    static_cast<float*>(dx), dw, db, n, voxels, channels, groups, threads);
}

}  // extern "C"
