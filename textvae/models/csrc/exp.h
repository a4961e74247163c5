// Vectorisable exponentials shared by textvae's kernels: no libm call in the loop, so gcc vectorises it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace textvae {

// The constants of exp_nonpositive's formula (below), shared by its scalar and vector forms
constexpr float EXP_LOWEST = -87.3f;
constexpr float LOG2E = 1.44269504088896341f;
constexpr float LN2_HI = 0.693145751953125f, LN2_LO = 1.428606765330187045e-06f;
// exp(r)'s Taylor coefficients from r^7 down to r^0, in Horner order
constexpr float EXP_TAYLOR[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};

// exp(x) for x <= 0, written so the compiler vectorises it: x = n ln2 + r with |r| <= ln2 / 2
// (ln2 in two parts, so n * ln2_hi is exact), exp(r) from its Taylor series to r^7 (truncation
// error below 5e-9 relative), 2^n put into the exponent bits. Below -87.3 exp(x) would no longer
// be a normal float: 0, as a flushed softmax gives.
inline float exp_nonpositive(float x) {
  const float xc = x < EXP_LOWEST ? EXP_LOWEST : x;
  const float n = std::nearbyint(xc * LOG2E);
  float r = xc - n * LN2_HI;
  r -= n * LN2_LO;
  float p = EXP_TAYLOR[0];
  for (int k = 1; k < 8; ++k) p = p * r + EXP_TAYLOR[k];
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < EXP_LOWEST ? 0.0f : p * scale;
}

#if defined(__AVX512F__)
// exp_nonpositive on 16 lanes: the same formula, with 2^n applied by scalef (and 0 below EXP_LOWEST by its
// mask). Written out because gcc's vectorisation of the scalar function ran the softmax's exponentials at
// about half this speed (benchmarks/throughput.py, iw section).
inline __m512 exp_nonpositive16(__m512 x) {
  const __m512 lowest = _mm512_set1_ps(EXP_LOWEST);
  const __mmask16 normal = _mm512_cmp_ps_mask(x, lowest, _CMP_GE_OQ);
  const __m512 xc = _mm512_max_ps(x, lowest);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
  __m512 p = _mm512_set1_ps(EXP_TAYLOR[0]);
  for (int k = 1; k < 8; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_TAYLOR[k]));
  return _mm512_maskz_scalef_ps(normal, p, n);
}
#endif

// the logistic sigmoid 1 / (1 + e^-x), through e^-|x| so that the exponential never overflows
inline float sigmoid(float x) {
  const float e = exp_nonpositive(-std::fabs(x));
  const float r = 1.0f / (1.0f + e);
  return x >= 0.0f ? r : e * r;
}

// tanh x = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|)
inline float tanh_(float x) {
  const float e = exp_nonpositive(-2.0f * std::fabs(x));
  const float t = (1.0f - e) / (1.0f + e);
  return x >= 0.0f ? t : -t;
}

}  // namespace textvae
