// The thread schedule of the CUDA spsa_reduce kernel, shared by the kernel and by its serial
// host emulation (csrc/cpu/spsa_reduce_schedule_cpu.cpp, the test-only op
// medhpc::_spsa_reduce_schedule), so the index maths is tested on a machine without a GPU.
//
// One CUDA block of kSpsaReduceThreads = 128 threads owns one 4096-element tile of one image.
// Directions are taken in groups of kSpsaReduceGroup = 4, and each group runs in two phases:
//
//   draw        thread t computes the Philox block of (lane t % 32, direction t / 32 of the
//               group) once and stores its 4 words in shared memory;
//   (barrier)
//   accumulate  thread t owns word t / 32 of lane t % 32's blocks, i.e. 32 elements of the
//               tile, and adds its 32 signs of every direction of the group, directions in
//               ascending order.
//
// Each block is computed once (not once per word, as a warp-per-word kernel would), and every
// element's sum still runs over directions 0, 1, 2, ... in order: the same floating-point
// operations in the same order as the CPU kernel, so the results are bit-identical to it.
// Two shared buffers alternate between groups, so one barrier per group suffices: a thread
// that writes group g + 2 into a buffer has passed group g + 1's barrier, which every thread
// reaches only after it has finished reading group g from that buffer.
#pragma once

#include <cstdint>

#include "common/rademacher.h"

// `#pragma unroll` for nvcc; host compilers would warn about the unknown pragma.
#if defined(__CUDACC__)
#define MEDHPC_SPSA_UNROLL _Pragma("unroll")
#else
#define MEDHPC_SPSA_UNROLL
#endif

namespace medhpc {

constexpr int kSpsaWords = 4;                                        // 32-bit words of a block
constexpr int kSpsaReduceThreads = kSpsaWords * kSpsaLanes;          // one per (word, lane)
constexpr int kSpsaReduceGroup = kSpsaReduceThreads / kSpsaLanes;    // directions per group
constexpr int kSpsaReduceSlots = kSpsaReduceGroup * kSpsaWords * kSpsaLanes;  // words per group
constexpr int kSpsaReduceBuffers = 2;                                // alternating groups
static_assert(kSpsaReduceGroup * kSpsaLanes == kSpsaReduceThreads,
              "every thread draws exactly one block of a full group");
static_assert(kSpsaWords * 32 * kSpsaLanes == kSpsaTile, "a tile is 32 lanes x 128 bits");

// The scale 1 / (2 delta total) of every finite difference, in the accumulation type.
template <typename acc_t>
MEDHPC_HD acc_t spsa_reduce_scale(double delta, int64_t total) {
  return acc_t(1) / (acc_t(2) * static_cast<acc_t>(delta) * static_cast<acc_t>(total));
}

// Number of groups of a chunk of `count` directions, and the size of group g (the last one
// is short when count % 4 != 0).
MEDHPC_HD int64_t spsa_reduce_groups(int64_t count) {
  return (count + kSpsaReduceGroup - 1) / kSpsaReduceGroup;
}
MEDHPC_HD int spsa_reduce_group_size(int64_t g, int64_t count) {
  const int64_t left = count - g * kSpsaReduceGroup;
  return static_cast<int>(left < kSpsaReduceGroup ? left : kSpsaReduceGroup);
}

// Draw phase: the lane and the direction within the group whose block thread t computes.
MEDHPC_HD int spsa_reduce_draw_lane(int t) { return t % kSpsaLanes; }
MEDHPC_HD int spsa_reduce_draw_direction(int t) { return t / kSpsaLanes; }

// Shared-memory slot of word `word` of the block of (direction d of the group, lane). Lanes
// are innermost, so both phases touch 32 consecutive words per warp: no bank conflicts.
MEDHPC_HD int spsa_reduce_slot(int d, int word, int lane) {
  return (d * kSpsaWords + word) * kSpsaLanes + lane;
}

// Accumulate phase: the word and lane whose 32 bits thread t sums.
MEDHPC_HD int spsa_reduce_acc_word(int t) { return t / kSpsaLanes; }
MEDHPC_HD int spsa_reduce_acc_lane(int t) { return t % kSpsaLanes; }

// The element (within the image) that accumulator j of the thread summing (word, lane) of
// `tile` belongs to: bit word * 32 + j of that lane's block (see rademacher.h).
MEDHPC_HD int64_t spsa_reduce_element(int64_t tile, int word, int j, int lane) {
  return tile * kSpsaTile + static_cast<int64_t>(word * 32 + j) * kSpsaLanes + lane;
}

// Draw phase of thread t for a group of n directions starting at global direction k0:
// writes the 4 words of its block into the group's buffer `words` (kSpsaReduceSlots long).
MEDHPC_HD void spsa_reduce_draw(uint32_t* words, int t, uint64_t seed, uint32_t offset,
                                int64_t tile, int64_t b, int64_t k0, int n) {
  const int d = spsa_reduce_draw_direction(t), lane = spsa_reduce_draw_lane(t);
  if (d >= n) return;
  const Philox4 blk = spsa_block(seed, offset, tile, lane, k0 + d, b);
  words[spsa_reduce_slot(d, 0, lane)] = blk.x0;
  words[spsa_reduce_slot(d, 1, lane)] = blk.x1;
  words[spsa_reduce_slot(d, 2, lane)] = blk.x2;
  words[spsa_reduce_slot(d, 3, lane)] = blk.x3;
}

// Accumulate phase of thread t for the same group: acc[j] += +-c_d over the group's
// directions d = 0 .. n-1 in ascending order, c_d = (L[2d] - L[2d+1]) * scale with `lb`
// pointing at the group's first loss pair.
template <typename acc_t, typename scalar_t>
MEDHPC_HD void spsa_reduce_accumulate(acc_t* acc, const uint32_t* words, int t,
                                      const scalar_t* lb, int n, acc_t scale) {
  const int word = spsa_reduce_acc_word(t), lane = spsa_reduce_acc_lane(t);
  for (int d = 0; d < n; ++d) {
    const acc_t c = (static_cast<acc_t>(lb[2 * d]) - static_cast<acc_t>(lb[2 * d + 1])) * scale;
    const uint32_t w = words[spsa_reduce_slot(d, word, lane)];
    MEDHPC_SPSA_UNROLL
    for (int j = 0; j < 32; ++j) acc[j] += ((w >> j) & 1u) ? c : -c;
  }
}

// Final phase of thread t: its 32 sums into the image's gradient `grad_b` (D elements).
template <typename acc_t, typename scalar_t>
MEDHPC_HD void spsa_reduce_store(scalar_t* grad_b, const acc_t* acc, int t, int64_t tile,
                                 int64_t D) {
  const int word = spsa_reduce_acc_word(t), lane = spsa_reduce_acc_lane(t);
  MEDHPC_SPSA_UNROLL
  for (int j = 0; j < 32; ++j) {
    const int64_t e = spsa_reduce_element(tile, word, j, lane);
    if (e < D) grad_b[e] = static_cast<scalar_t>(acc[j]);
  }
}

}  // namespace medhpc
