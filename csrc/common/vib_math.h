// Element maths of the VIB reparameterisation, shared by the CPU and CUDA kernels.
// The executable specification is medhpc/ops/reference.py; keep the two in step.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/philox.h"

namespace medhpc {

// softplus with PyTorch's default threshold (x > 20 returns x), so kernel and reference agree.
template <typename T>
MEDHPC_HD T softplus(T x) {
  using std::exp;
  using std::log1p;
  return x > T(20) ? x : log1p(exp(x));
}

template <typename T>
MEDHPC_HD T sigmoid(T x) {
  using std::exp;
  return T(1) / (T(1) + exp(-x));
}

// sigma pre-activation r: Häkkinen & Raj apply a ReLU to the encoder output, Alemi et al. do not.
template <typename T>
MEDHPC_HD T vib_r(T a, bool relu) {
  return (relu && !(a > T(0))) ? T(0) : a;
}

// sigma = softplus(r - 5): the shift starts training with small noise (sigma ~ 6.7e-3).
template <typename T>
MEDHPC_HD T vib_sigma(T a, bool relu) {
  return softplus(vib_r(a, relu) - T(5));
}

// d sigma / d a, with the ReLU's indicator (zero at a <= 0) when relu is set; above the
// softplus threshold the slope is exactly 1, as in PyTorch's softplus backward.
template <typename T>
MEDHPC_HD T vib_dsigma_da(T a, bool relu) {
  if (relu && !(a > T(0))) return T(0);
  const T x = a - T(5);
  return x > T(20) ? T(1) : sigmoid(x);
}

// Standard normal number `index` of the stream (seed, offset): Box-Muller on the first two
// words of Philox block index/2, cosine branch for even indices, sine branch for odd ones.
// u1, u2 = (word + 0.5) * 2^-32 lie strictly inside (0, 1), so log(u1) is finite.
template <typename T>
MEDHPC_HD T philox_normal(uint64_t seed, uint64_t offset, uint64_t index) {
  using std::cos;
  using std::log;
  using std::sin;
  using std::sqrt;
  const Philox4 b = philox_block(seed, offset, index >> 1);
  const T two_pow_m32 = T(2.3283064365386963e-10);  // 2^-32, exact in float and double
  const T u1 = (static_cast<T>(b.x0) + T(0.5)) * two_pow_m32;
  const T u2 = (static_cast<T>(b.x1) + T(0.5)) * two_pow_m32;
  const T radius = sqrt(T(-2) * log(u1));
  const T theta = T(6.283185307179586) * u2;
  return (index & 1) ? radius * sin(theta) : radius * cos(theta);
}

}  // namespace medhpc
