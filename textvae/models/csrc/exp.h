// Vectorisable exponentials shared by textvae's kernels: no libm call in the loop, so gcc vectorises it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace textvae {

// exp(x) for x <= 0, written so the compiler vectorises it: x = n ln2 + r with |r| <= ln2 / 2
// (ln2 in two parts, so n * ln2_hi is exact), exp(r) from its Taylor series to r^7 (truncation
// error below 5e-9 relative), 2^n put into the exponent bits. Below -87.3 exp(x) would no longer
// be a normal float: 0, as a flushed softmax gives.
inline float exp_nonpositive(float x) {
  const float lowest = -87.3f;
  const float xc = x < lowest ? lowest : x;
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693145751953125f;
  r -= n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < lowest ? 0.0f : p * scale;
}

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
