// bf16 <-> fp32 conversions shared by textvae's kernels (bits of a bf16 as uint16_t).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace textvae {

inline float from_bf16(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// round to nearest, ties to even (what torch's fp32 -> bf16 cast does for finite values)
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// to_bf16 where the value may be a NaN: it stays a (quiet) NaN, where the rounding's carry could make one
// an infinity or a zero
inline uint16_t to_bf16_keep_nan(float f) { return std::isnan(f) ? uint16_t(0x7FC0) : to_bf16(f); }

}  // namespace textvae
