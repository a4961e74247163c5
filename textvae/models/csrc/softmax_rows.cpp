// The elementwise half of the fused bf16 output loss (textvae/models/fused_loss.py), one pass per row.
//
// For a chunk of n tokens the GEMM has written bf16 logits l [n, V]. Per row i, in fp32:
//     x_v = l_iv + b_v,  m = max_v x_v,  s = sum_v exp(x_v - m),
//     nll_i = m + log s - x_{y_i},
//     G_iv = exp(x_v - m) / s - [v = y_i]            (stored in bf16; training only)
// torch does this in ~8 passes over [n, V] fp32 tensors that do not fit in cache (cast, bias, max,
// softmax, max, gather, subtract, cast back); here a row (V fp32 values, 40 KB at V = 10k) stays in
// the core's L1/L2 between its three passes, and rows are split over torch's OpenMP threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "bf16.h"
#include "exp.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using textvae::from_bf16;
using textvae::to_bf16;
using textvae::exp_nonpositive;

#if defined(__AVX512F__)
// 16 bf16 values (mask: which of them are read) as fp32
inline __m512 load_bf16x16(const uint16_t* p, __mmask16 mask) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16));
}

// f(v, mask) for v = 0, 16, 32, ... < V: whole vectors, then the last V mod 16 lanes under a mask
template <typename F>
inline void for_vectors(int64_t V, const F& f) {
  int64_t v = 0;
  for (; v + 16 <= V; v += 16) f(v, __mmask16(0xFFFF));
  if (v < V) f(v, __mmask16((1u << (V - v)) - 1u));
}
#endif

// x = l + b into x [V]; returns max_v x. Written out for AVX-512 (gcc vectorised the loop with its max
// reduction poorly: this pass took longer than the exponentials).
inline float biased_row(const uint16_t* l, const float* b, int64_t V, float* x) {
#if defined(__AVX512F__)
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for_vectors(V, [&](int64_t v, __mmask16 k) {
    const __m512 xv = _mm512_add_ps(load_bf16x16(l + v, k), _mm512_maskz_loadu_ps(k, b + v));
    _mm512_mask_storeu_ps(x + v, k, xv);
    m = _mm512_mask_max_ps(m, k, m, xv);
  });
  return _mm512_reduce_max_ps(m);
#else
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) {
    const float xv = from_bf16(l[v]) + b[v];
    x[v] = xv;
    m = xv > m ? xv : m;
  }
  return m;
#endif
}

// sum_v exp(x_v - m); with ``keep`` each exp(x_v - m) is written back into x
inline float exp_sum(float* x, float m, int64_t V, bool keep) {
#if defined(__AVX512F__)
  const __m512 mv = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  for_vectors(V, [&](int64_t v, __mmask16 k) {
    const __m512 e = textvae::exp_nonpositive16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + v), mv));
    if (keep) _mm512_mask_storeu_ps(x + v, k, e);
    s = _mm512_mask_add_ps(s, k, s, e);
  });
  return _mm512_reduce_add_ps(s);
#else
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < V; ++v) {
    const float e = exp_nonpositive(x[v] - m);
    if (keep) x[v] = e;
    s += e;
  }
  return s;
#endif
}

void check(const torch::Tensor& logits, const torch::Tensor& bias, const torch::Tensor& targets) {
  TORCH_CHECK(logits.device().is_cpu() && logits.dim() == 2 && logits.scalar_type() == torch::kBFloat16 &&
              logits.stride(1) == 1, "logits: a CPU bf16 [n, V] tensor with contiguous rows");
  TORCH_CHECK(bias.scalar_type() == torch::kFloat32 && bias.is_contiguous() && bias.numel() == logits.size(1),
              "bias: a contiguous fp32 [V] tensor");
  TORCH_CHECK(targets.scalar_type() == torch::kInt64 && targets.is_contiguous() && targets.numel() == logits.size(0),
              "targets: a contiguous int64 [n] tensor");
}

// rows [begin, end) in parallel, each with a row buffer of its thread
template <typename RowFn>
void for_rows(int64_t n, int64_t V, const RowFn& row_fn) {
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> x(V);
    for (int64_t i = begin; i < end; ++i) row_fn(i, x.data());
  });
}

}  // namespace

// nll [n] (fp32) of bf16 logits [n, V] + bias at targets [n]; writes G into grad [n, V] (bf16)
torch::Tensor nll_and_grad(const torch::Tensor& logits, const torch::Tensor& bias, const torch::Tensor& targets,
                           torch::Tensor grad) {
  check(logits, bias, targets);
  TORCH_CHECK(grad.scalar_type() == torch::kBFloat16 && grad.stride(1) == 1 && grad.size(0) == logits.size(0) &&
              grad.size(1) == logits.size(1), "grad: a bf16 tensor shaped like logits, with contiguous rows");
  const int64_t n = logits.size(0), V = logits.size(1);
  auto nll = torch::empty({n}, logits.options().dtype(torch::kFloat32));
  const auto* L = reinterpret_cast<const uint16_t*>(logits.data_ptr<at::BFloat16>());
  auto* G = reinterpret_cast<uint16_t*>(grad.data_ptr<at::BFloat16>());
  const float* b = bias.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  float* out = nll.data_ptr<float>();
  const int64_t l_stride = logits.stride(0), g_stride = grad.stride(0);
  for_rows(n, V, [&](int64_t i, float* x) {
    const uint16_t* l = L + i * l_stride;
    uint16_t* g = G + i * g_stride;
    const float m = biased_row(l, b, V, x);
    const float s = exp_sum(x, m, V, true);
    const int64_t t = y[i];
    out[i] = m + std::log(s) - (from_bf16(l[t]) + b[t]);
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) g[v] = to_bf16(x[v] * inv);
    g[t] = to_bf16(x[t] * inv - 1.0f);  // the target's entry formed in fp32: p_y near 1 keeps its digits
  });
  return nll;
}

// nll [n] only (evaluation): nothing is written but the result
torch::Tensor nll_only(const torch::Tensor& logits, const torch::Tensor& bias, const torch::Tensor& targets) {
  check(logits, bias, targets);
  const int64_t n = logits.size(0), V = logits.size(1);
  auto nll = torch::empty({n}, logits.options().dtype(torch::kFloat32));
  const auto* L = reinterpret_cast<const uint16_t*>(logits.data_ptr<at::BFloat16>());
  const float* b = bias.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  float* out = nll.data_ptr<float>();
  const int64_t l_stride = logits.stride(0);
  for_rows(n, V, [&](int64_t i, float* x) {
    const uint16_t* l = L + i * l_stride;
    const float m = biased_row(l, b, V, x);
    const float s = exp_sum(x, m, V, false);
    const int64_t t = y[i];
    out[i] = m + std::log(s) - (from_bf16(l[t]) + b[t]);
  });
  return nll;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nll_and_grad", &nll_and_grad, "fp32 NLL per row and bf16 softmax-minus-onehot of bf16 logits + bias");
  m.def("nll_only", &nll_only, "fp32 NLL per row of bf16 logits + bias");
}
