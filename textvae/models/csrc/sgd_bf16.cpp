// The working copies' part of a bf16 SGD step (textvae/training/working_copies.py):
// - the squared norm of their bf16 gradients for the clip, sum_i float(grad_i)^2 read in one pass (torch
//   first writes an fp32 copy of each gradient, a [V, H] one for the output layer);
// - plain SGD on an fp32 master weight from a bf16 gradient, writing the weight's bf16 working copy in the
//   same pass:
//     master_i += alpha * float(grad_i),   working_i = bf16(master_i)      (alpha = -lr * clip scale)
//   torch needs four passes for it (grad cast to fp32, the add, the cast back, the copy), each over
//   the whole weight in memory; here each element is read and written once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// sum of float(g_i)^2 over n bf16 elements, in fp32. A function of its own: written inline in the
// parallel_reduce lambda below, gcc kept the reduction scalar (one dependent add per element, ~16x slower).
float block_sum_squares(const uint16_t* g, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float x = textvae::from_bf16(g[i]);
    s += x * x;
  }
  return s;
}

}  // namespace

// Sum of squares of bf16 gradients: fp32 over blocks of 4096 elements, the blocks added in double.
double sum_squares(const std::vector<torch::Tensor>& grads) {
  double total = 0.0;
  for (const auto& grad : grads) {
    // any dense layout (the transposed copy's gradient too): the order of the squares does not matter
    TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == torch::kBFloat16 && grad.is_non_overlapping_and_dense(),
                "grads: dense CPU bf16 tensors");
    const uint16_t* g = reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>());
    total += at::parallel_reduce(
        int64_t(0), grad.numel(), int64_t(1) << 16, 0.0,
        [g](int64_t begin, int64_t end, double acc) {
          for (int64_t start = begin; start < end; start += 4096) {
            acc += block_sum_squares(g + start, std::min(end, start + 4096) - start);
          }
          return acc;
        },
        [](double a, double b) { return a + b; });
  }
  return total;
}

void sgd_update(torch::Tensor master, const torch::Tensor& grad, torch::Tensor working, double alpha) {
  TORCH_CHECK(master.device().is_cpu() && master.scalar_type() == torch::kFloat32 && master.is_contiguous(),
              "master: a contiguous CPU fp32 tensor");
  TORCH_CHECK(grad.scalar_type() == torch::kBFloat16 && grad.is_contiguous() && grad.sizes() == master.sizes(),
              "grad: a contiguous bf16 tensor of the master's shape");
  TORCH_CHECK(working.scalar_type() == torch::kBFloat16 && working.is_contiguous() &&
              working.sizes() == master.sizes(), "working: a contiguous bf16 tensor of the master's shape");
  float* m = master.data_ptr<float>();
  const uint16_t* g = reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>());
  uint16_t* w = reinterpret_cast<uint16_t*>(working.data_ptr<at::BFloat16>());
  const float a = static_cast<float>(alpha);
  at::parallel_for(0, master.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float x = m[i] + a * textvae::from_bf16(g[i]);
      m[i] = x;
      w[i] = textvae::to_bf16_keep_nan(x);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sum_squares", &sum_squares, "sum of float(g)^2 over the elements of bf16 tensors, as a double");
  m.def("sgd_update", &sgd_update, "master += alpha * float(grad); working = bf16(master), in one pass");
}
