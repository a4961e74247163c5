// bf16 <-> fp32 conversions shared by textvae's kernels (bits of a bf16 as uint16_t).
#pragma once

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

}  // namespace textvae
