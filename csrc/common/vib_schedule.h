// Where the VIB noise lives in the Philox stream, and how the kernels walk it in Box-Muller
// pairs. Host and device code share these functions: the CUDA kernels call the per-thread
// bodies below once per thread, and the CPU op _vib_reparam_cuda_schedule calls the very same
// bodies in a loop, so a CPU test checks the CUDA schedule (positions and values).
//
// Noise layout (medhpc/ops/reference.py, vib_noise_index): rows b and b' of the batch share
// noise iff b / share == b' / share, so each sample has G = ceil(B / share) noise rows, and
// z[s, b, j] uses stream position n = (s * G + b / share) * K + j of [0, S * G * K).
#pragma once

#include <cstdint>

#include "common/philox.h"
#include "common/vib_math.h"

namespace medhpc {

struct VibShape {
  int64_t S, B, K, share;
  int64_t G;          // noise rows per sample, ceil(B / share)
  int64_t positions;  // S * G * K stream positions in use
};

MEDHPC_HD VibShape vib_shape(int64_t S, int64_t B, int64_t K, int64_t share) {
  const int64_t G = (B + share - 1) / share;
  return VibShape{S, B, K, share, G, S * G * K};
}

// Stream position of the normal that z[s, b, j] uses.
MEDHPC_HD int64_t vib_noise_position(const VibShape& sh, int64_t s, int64_t b, int64_t j) {
  return (s * sh.G + b / sh.share) * sh.K + j;
}

// The inverse: stream position n is sample s, noise row g, latent j.
struct VibSlot {
  int64_t s, g, j;
};

MEDHPC_HD VibSlot vib_slot(const VibShape& sh, int64_t n) {
  const int64_t row = n / sh.K;
  return VibSlot{row / sh.G, row % sh.G, n - row * sh.K};
}

// Batch rows [vib_group_begin, vib_group_end) that noise row g feeds.
MEDHPC_HD int64_t vib_group_begin(const VibShape& sh, int64_t g) { return g * sh.share; }

MEDHPC_HD int64_t vib_group_end(const VibShape& sh, int64_t g) {
  const int64_t end = (g + 1) * sh.share;
  return end < sh.B ? end : sh.B;
}

// Box-Muller pairs covering the positions: pair p is positions 2p (cosine) and 2p + 1 (sine);
// with an odd count the last pair has only its first. Pairs straddle latent rows, noise rows
// and samples wherever K (or G * K) is odd: each position is mapped on its own (vib_slot).
MEDHPC_HD int64_t vib_pair_count(const VibShape& sh) { return (sh.positions + 1) / 2; }

// The normals at positions n and n + 1: one Philox block when n is even (a whole pair), two
// when n is odd (n ends one pair, n + 1 starts the next).
template <typename T>
MEDHPC_HD void philox_normals_from(uint64_t seed, uint64_t offset, int64_t n, T& e0, T& e1) {
  const NormalPair<T> p = philox_normal_pair<T>(seed, offset, static_cast<uint64_t>(n >> 1));
  if ((n & 1) == 0) {
    e0 = p.cos_branch;
    e1 = p.sin_branch;
    return;
  }
  e0 = p.sin_branch;
  e1 = philox_normal_pair<T>(seed, offset, static_cast<uint64_t>((n >> 1) + 1)).cos_branch;
}

// ---------------------------------------------------------------------------------------------
// Per-thread bodies of the CUDA kernels (csrc/cuda/vib_reparam_cuda.cu).

// Forward, thread `p` of vib_pair_count(sh): one Philox block and both of its normals, each
// written to every batch row its noise row feeds. sigma (B, K) is the precomputed
// softplus(r - 5) in acc_t. `trace`, when not null, receives each written z element's stream
// position (the CPU emulation's check; the CUDA kernel passes null).
template <typename scalar_t, typename acc_t>
MEDHPC_HD void vib_forward_pair(int64_t p, const VibShape& sh, const scalar_t* mu,
                                const acc_t* sigma, scalar_t* z, uint64_t seed, uint64_t offset,
                                int64_t* trace) {
  const NormalPair<acc_t> e = philox_normal_pair<acc_t>(seed, offset, static_cast<uint64_t>(p));
  for (int h = 0; h < 2; ++h) {
    const int64_t n = 2 * p + h;
    if (n >= sh.positions) break;
    const VibSlot q = vib_slot(sh, n);
    const acc_t eps = h ? e.sin_branch : e.cos_branch;
    for (int64_t b = vib_group_begin(sh, q.g); b < vib_group_end(sh, q.g); ++b) {
      const int64_t in = b * sh.K + q.j;
      const int64_t out = (q.s * sh.B + b) * sh.K + q.j;
      z[out] = static_cast<scalar_t>(static_cast<acc_t>(mu[in]) + sigma[in] * eps);
      if (trace != nullptr) trace[out] = n;
    }
  }
}

// Backward threads: share * vib_backward_columns(sh) of them. Thread (r, q) owns positions
// m = 2q and 2q + 1 of one sample's G * K (the same two in every sample) for row r of their
// noise rows' groups, and sums over the samples in order (no atomics: reproducible). When
// G * K is even every sample starts on a pair boundary and the thread draws one Philox block
// per sample; when it is odd, odd samples start mid-pair and it draws two (philox_normals_from).
MEDHPC_HD int64_t vib_backward_columns(const VibShape& sh) { return (sh.G * sh.K + 1) / 2; }

template <typename scalar_t, typename acc_t>
MEDHPC_HD void vib_backward_pair(int64_t r, int64_t q, const VibShape& sh, const scalar_t* gz,
                                 const scalar_t* gkl, const scalar_t* mu, const scalar_t* a,
                                 scalar_t* gmu, scalar_t* ga, uint64_t seed, uint64_t offset,
                                 bool relu, bool kl_mean, int64_t* trace) {
  const int64_t GK = sh.G * sh.K;
  int64_t b[2], j[2];
  bool live[2];
  for (int h = 0; h < 2; ++h) {
    const int64_t m = 2 * q + h;
    const VibSlot slot = vib_slot(sh, m < GK ? m : 0);
    b[h] = vib_group_begin(sh, slot.g) + r;
    j[h] = slot.j;
    live[h] = m < GK && b[h] < vib_group_end(sh, slot.g);
  }
  if (!live[0] && !live[1]) return;
  acc_t sum_g[2] = {acc_t(0), acc_t(0)}, sum_ge[2] = {acc_t(0), acc_t(0)};
  for (int64_t s = 0; s < sh.S; ++s) {
    const int64_t n0 = s * GK + 2 * q;
    acc_t e[2];
    philox_normals_from<acc_t>(seed, offset, n0, e[0], e[1]);
    for (int h = 0; h < 2; ++h) {
      if (!live[h]) continue;
      const int64_t idx = (s * sh.B + b[h]) * sh.K + j[h];
      const acc_t g = static_cast<acc_t>(gz[idx]);
      sum_g[h] += g;
      sum_ge[h] += g * e[h];
      if (trace != nullptr) trace[idx] = n0 + h;
    }
  }
  for (int h = 0; h < 2; ++h) {
    if (!live[h]) continue;
    const int64_t in = b[h] * sh.K + j[h];
    const acc_t k = static_cast<acc_t>(sh.K);
    const acc_t c = kl_mean ? static_cast<acc_t>(gkl[b[h]]) / k : static_cast<acc_t>(gkl[b[h]]);
    const acc_t m = static_cast<acc_t>(mu[in]);
    const acc_t av = static_cast<acc_t>(a[in]);
    const acc_t sg = vib_sigma<acc_t>(av, relu);
    gmu[in] = static_cast<scalar_t>(sum_g[h] + c * m);
    const acc_t g_sigma = sum_ge[h] + c * (sg - acc_t(1) / sg);
    ga[in] = static_cast<scalar_t>(g_sigma * vib_dsigma_da<acc_t>(av, relu));
  }
}

}  // namespace medhpc
