// medhpc::_spsa_reduce_schedule, test only: the CUDA spsa_reduce kernel's block / thread /
// shared-memory schedule run serially on the host, with the very functions the kernel calls
// (common/spsa_reduce_schedule.h). tests/ops/test_spsa.py holds it to spsa_reduce's CPU kernel
// and to the reference bit for bit, so the kernel's index maths is tested without a GPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/spsa_reduce_schedule.h"

namespace medhpc {
namespace {

// The schedule's maps are bijections: the threads of a full group draw every (direction,
// lane) once, the 4 words of those blocks fill the group's shared buffer once, and the
// threads' accumulators cover a tile once, each element holding the bit rademacher.h gives it.
void check_schedule_maps() {
  std::vector<int> drawn(kSpsaReduceGroup * kSpsaLanes, 0), slots(kSpsaReduceSlots, 0);
  for (int t = 0; t < kSpsaReduceThreads; ++t) {
    const int d = spsa_reduce_draw_direction(t), lane = spsa_reduce_draw_lane(t);
    TORCH_INTERNAL_ASSERT(d >= 0 && d < kSpsaReduceGroup && lane >= 0 && lane < kSpsaLanes);
    ++drawn[d * kSpsaLanes + lane];
    for (int w = 0; w < kSpsaWords; ++w) {
      const int s = spsa_reduce_slot(d, w, lane);
      TORCH_INTERNAL_ASSERT(s >= 0 && s < kSpsaReduceSlots, "slot ", s, " out of range");
      ++slots[s];
    }
  }
  for (const int n : drawn) TORCH_INTERNAL_ASSERT(n == 1, "a block is drawn ", n, " times");
  for (const int n : slots) TORCH_INTERNAL_ASSERT(n == 1, "a slot is written ", n, " times");
  const int64_t tile = 3;
  std::vector<int> owned(kSpsaTile, 0);
  for (int t = 0; t < kSpsaReduceThreads; ++t) {
    const int word = spsa_reduce_acc_word(t), lane = spsa_reduce_acc_lane(t);
    for (int j = 0; j < 32; ++j) {
      const int64_t e = spsa_reduce_element(tile, word, j, lane) - tile * kSpsaTile;
      TORCH_INTERNAL_ASSERT(e >= 0 && e < kSpsaTile, "element ", e, " outside its tile");
      TORCH_INTERNAL_ASSERT(e % kSpsaLanes == lane && e / kSpsaLanes == word * 32 + j,
                            "element ", e, " is not bit ", word * 32 + j, " of lane ", lane);
      ++owned[e];
    }
  }
  for (const int n : owned) TORCH_INTERNAL_ASSERT(n == 1, "an element is summed ", n, " times");
}

// Every CUDA block (tile, b) in turn; within it, the phases of all threads between two
// barriers. The order is the one most hostile to the buffer reuse that CUDA allows: after
// group g's barrier, every thread first writes group g + 1's blocks (as threads that run
// ahead may) and only then does any thread read group g.
template <typename scalar_t>
void schedule_kernel(const scalar_t* losses, scalar_t* grad, int64_t B, int64_t D,
                     int64_t first, int64_t count, double delta, uint64_t seed, uint32_t offset,
                     int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = (D + kSpsaTile - 1) / kSpsaTile, groups = spsa_reduce_groups(count);
  const acc_t scale = spsa_reduce_scale<acc_t>(delta, total);
  // Shared memory starts as garbage on the GPU; poison it so a read of an unwritten slot shows.
  std::vector<uint32_t> shared(kSpsaReduceBuffers * kSpsaReduceSlots);
  std::vector<acc_t> acc(kSpsaReduceThreads * 32);
  for (int64_t b = 0; b < B; ++b) {                // blockIdx.y
    for (int64_t tile = 0; tile < tiles; ++tile) {  // blockIdx.x
      std::fill(shared.begin(), shared.end(), 0xA5A5A5A5u);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* lb = losses + b * 2 * count;
      auto draw = [&](int64_t g) {
        uint32_t* buf = shared.data() + (g % kSpsaReduceBuffers) * kSpsaReduceSlots;
        const int n = spsa_reduce_group_size(g, count);
        for (int t = 0; t < kSpsaReduceThreads; ++t) {
          spsa_reduce_draw(buf, t, seed, offset, tile, b, first + g * kSpsaReduceGroup, n);
        }
      };
      if (groups > 0) draw(0);
      for (int64_t g = 0; g < groups; ++g) {
        // __syncthreads() of group g
        if (g + 1 < groups) draw(g + 1);
        const uint32_t* buf = shared.data() + (g % kSpsaReduceBuffers) * kSpsaReduceSlots;
        const int n = spsa_reduce_group_size(g, count);
        for (int t = 0; t < kSpsaReduceThreads; ++t) {
          spsa_reduce_accumulate(acc.data() + t * 32, buf, t, lb + 2 * g * kSpsaReduceGroup, n,
                                 scale);
        }
      }
      for (int t = 0; t < kSpsaReduceThreads; ++t) {
        spsa_reduce_store(grad + b * D, acc.data() + t * 32, t, tile, D);
      }
    }
  }
}

at::Tensor spsa_reduce_schedule_cpu(const at::Tensor& losses_in, at::IntArrayRef image_shape,
                                    int64_t first, double delta, int64_t seed, int64_t offset,
                                    int64_t total) {
  check_spsa_reduce_inputs(losses_in, image_shape, delta, total);
  const at::Tensor losses = losses_in.contiguous();
  const int64_t B = losses.size(0), count = losses.size(1) / 2;
  const int64_t D = c10::multiply_integers(image_shape);
  check_spsa_stream("_spsa_reduce_schedule", first, count, B, D, seed, offset);
  check_schedule_maps();
  at::Tensor grad = at::empty(spsa_grad_shape(B, image_shape), losses.options());
  if (grad.numel() == 0) return grad;
  // Half and bfloat16 too: on the host they accumulate in float, as the CUDA kernel does.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, losses.scalar_type(),
                                  "_spsa_reduce_schedule_cpu", [&] {
                                    schedule_kernel<scalar_t>(
                                        losses.const_data_ptr<scalar_t>(),
                                        grad.mutable_data_ptr<scalar_t>(), B, D, first, count,
                                        delta, static_cast<uint64_t>(seed),
                                        static_cast<uint32_t>(offset), total);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(medhpc, CPU, m) {
  m.impl("_spsa_reduce_schedule", &spsa_reduce_schedule_cpu);
}

}  // namespace medhpc
