// Inverted dropout with a counter-based mask (textvae/models/decoders.py, Dropout):
//     y_i = keep_i * x_i / (1 - p),   keep_i = [u_i >= t],   t = round(p * 2^32)
// u_i is the high half of SplitMix64's output for counter i, z = seed + (i + 1) * 0x9E3779B97F4A7C15
// mixed by Stafford's "Mix13" finaliser (Steele, Lea and Flood 2014, "Fast splittable pseudorandom
// number generators"): a function of (seed, i) alone, so every element is drawn independently of the
// others and of the thread computing it, and the backward pass recomputes the same mask from the seed
// instead of keeping it. torch's CPU dropout draws one element at a time from a locked Mersenne
// Twister (~2.5 ns per element here); this is a few vector instructions per element.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"

#include <cmath>
#include <cstdint>

namespace {

inline uint32_t draw(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return uint32_t(z >> 32);
}

// elements [begin, end) of y = keep * x * scale for one element type, converted through fp32
template <typename T, typename Load, typename Store>
void apply(const T* x, T* y, int64_t n, uint64_t seed, uint64_t threshold, float scale, Load load, Store store) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float kept = load(x[i]) * scale;  // read unconditionally: a masked read does not vectorise
      y[i] = store(uint64_t(draw(seed, uint64_t(i))) >= threshold ? kept : 0.0f);
    }
  });
}

}  // namespace

// y = x * mask / (1 - p) for a contiguous CPU fp32 or bf16 tensor x, the mask drawn from (seed, index)
torch::Tensor dropout(const torch::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() &&
              (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16),
              "x: a contiguous CPU fp32 or bf16 tensor");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "p: in [0, 1)");
  auto y = torch::empty_like(x);
  const uint64_t threshold = uint64_t(std::llround(p * 4294967296.0));
  const float scale = float(1.0 / (1.0 - p));
  const uint64_t s = uint64_t(seed);
  if (x.scalar_type() == torch::kFloat32) {
    apply(x.data_ptr<float>(), y.data_ptr<float>(), x.numel(), s, threshold, scale,
          [](float v) { return v; }, [](float v) { return v; });
  } else {
    apply(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
          reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), x.numel(), s, threshold, scale,
          [](uint16_t v) { return textvae::from_bf16(v); },
          [](float v) { return textvae::to_bf16_keep_nan(v); });
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout", &dropout, "inverted dropout of a CPU fp32/bf16 tensor with a mask counter-hashed from a seed");
}
