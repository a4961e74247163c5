// Plain SGD on an fp32 master weight from a bf16 gradient, writing the weight's bf16 working copy in the
// same pass (textvae/training/working_copies.py):
//     master_i += alpha * float(grad_i),   working_i = bf16(master_i)      (alpha = -lr * clip scale)
// torch needs four passes for it (grad cast to fp32, the add, the cast back, the copy), each over
// the whole weight in memory; here each element is read and written once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"

#include <cmath>
#include <cstdint>

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
      w[i] = std::isnan(x) ? uint16_t(0x7FC0) : textvae::to_bf16(x);  // a NaN stays a NaN
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sgd_update", &sgd_update, "master += alpha * float(grad); working = bf16(master), in one pass");
}
