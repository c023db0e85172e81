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
// `a <= 0` (not `!(a > 0)`) so that a NaN passes through as torch.relu lets it: NaN in, NaN out.
template <typename T>
MEDHPC_HD T vib_r(T a, bool relu) {
  return (relu && a <= T(0)) ? T(0) : a;
}

// sigma = softplus(r - 5): the shift starts training with small noise (sigma ~ 6.7e-3).
template <typename T>
MEDHPC_HD T vib_sigma(T a, bool relu) {
  return softplus(vib_r(a, relu) - T(5));
}

// d sigma / d a, with the ReLU's indicator (zero at a <= 0) when relu is set; above the
// softplus threshold the slope is exactly 1, as in PyTorch's softplus backward. A NaN `a`
// gives a NaN slope (sigmoid(NaN)), so NaN propagates into the gradient too.
template <typename T>
MEDHPC_HD T vib_dsigma_da(T a, bool relu) {
  if (relu && a <= T(0)) return T(0);
  const T x = a - T(5);
  return x > T(20) ? T(1) : sigmoid(x);
}

// The two standard normals of Philox block `pair` of the stream (seed, offset): Box-Muller on
// its first two words, the cosine branch (stream position 2*pair) and the sine branch
// (position 2*pair + 1). u1, u2 = (word + 0.5) * 2^-32 lie strictly inside (0, 1), so log(u1)
// is finite. One block, one log and one sqrt serve both numbers.
template <typename T>
struct NormalPair {
  T cos_branch, sin_branch;
};

template <typename T>
MEDHPC_HD NormalPair<T> box_muller(const Philox4& b) {
  using std::cos;
  using std::log;
  using std::sin;
  using std::sqrt;
  const T two_pow_m32 = T(2.3283064365386963e-10);  // 2^-32, exact in float and double
  const T u1 = (static_cast<T>(b.x0) + T(0.5)) * two_pow_m32;
  const T u2 = (static_cast<T>(b.x1) + T(0.5)) * two_pow_m32;
  const T radius = sqrt(T(-2) * log(u1));
  const T theta = T(6.283185307179586) * u2;
  return NormalPair<T>{radius * cos(theta), radius * sin(theta)};
}

template <typename T>
MEDHPC_HD NormalPair<T> philox_normal_pair(uint64_t seed, uint64_t offset, uint64_t pair) {
  return box_muller<T>(philox_block(seed, offset, pair));
}

// Standard normal number `index` of the stream: its branch of pair index/2. Kernels draw whole
// pairs (philox_normal_pair); this single-number form is the definition they are tested against.
template <typename T>
MEDHPC_HD T philox_normal(uint64_t seed, uint64_t offset, uint64_t index) {
  const NormalPair<T> p = philox_normal_pair<T>(seed, offset, index >> 1);
  return (index & 1) ? p.sin_branch : p.cos_branch;
}

}  // namespace medhpc
