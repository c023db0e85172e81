// Rademacher directions of the SPSA kernels, shared by host and device code.
//
// Element e of direction k for image b takes one bit of a Philox block. Elements are grouped
// in tiles of 4096: the 32 "lanes" (e % 32) of a tile each own one 128-bit Philox block, and
// bit (e % 4096) / 32 of it. A CUDA warp thus draws one block per thread and writes 32
// consecutive elements per step, and a CPU loop draws 32 blocks per tile and runs linearly.
// medhpc/ops/reference.py reproduces this mapping in plain PyTorch.
#pragma once

#include <cstdint>

#include "common/philox.h"

namespace medhpc {

constexpr int64_t kSpsaTile = 4096;  // elements per tile: 32 lanes x 128 bits
constexpr int64_t kSpsaLanes = 32;

// The Philox block of (tile, lane) for direction k of image b in stream (seed, offset).
MEDHPC_HD Philox4 spsa_block(uint64_t seed, uint32_t offset, int64_t tile, int64_t lane,
                             int64_t k, int64_t b) {
  return philox4x32_10(static_cast<uint32_t>(tile * kSpsaLanes + lane), static_cast<uint32_t>(k),
                       static_cast<uint32_t>(b), offset, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// +1 or -1 from bit `bit` (0..127) of a block.
template <typename T>
MEDHPC_HD T rademacher_sign(const Philox4& blk, int bit) {
  const uint32_t w = (bit < 64) ? ((bit < 32) ? blk.x0 : blk.x1) : ((bit < 96) ? blk.x2 : blk.x3);
  return ((w >> (bit & 31)) & 1u) ? T(1) : T(-1);
}

template <typename T>
MEDHPC_HD T clip(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

}  // namespace medhpc
