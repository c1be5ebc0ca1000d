// Scalar math for the CPU kernels' inner loops, written branch-free so that GCC vectorises the
// loops that call it (models/ops/cpu_attention.cpp, models/ops/fused_elementwise.cpp).
#pragma once
#include <cstdint>
#include <cstring>

namespace kiln {

// e^x within a few ulp for |x| < 87: x = n ln 2 + r with |r| <= ln 2 / 2, a degree-6 polynomial
// for e^r (Cephes' coefficients), 2^n from the exponent bits. x is clamped to [-87.3, 88]: below,
// e^x is under FLT_MIN; above, 2^n would overflow the exponent field (e^88 is 1.65e38, finite).
inline float exp_clamped(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.f ? 88.f : x;
  const float n = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return e * two_n;
}

}  // namespace kiln
