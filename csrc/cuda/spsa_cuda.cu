// CUDA kernels of medhpc::spsa_perturb and medhpc::spsa_reduce.
//
// A warp owns one 4096-element tile of one direction: each lane draws its own 128-bit Philox
// block and the warp writes 32 consecutive elements per step (coalesced), so the perturbed
// copies go straight into the model's input buffer and directions are never stored. The
// reduce regenerates the directions, each Philox block once (passed through shared memory to
// the 4 threads that consume its 4 words), and keeps 32 accumulators per thread in registers;
// each element's sum runs over directions in a fixed order (no atomics): bit-for-bit
// reproducible, and equal to the CPU kernel's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <cstdint>

#include "common/checks.h"
#include "common/rademacher.h"
#include "common/spsa_reduce_schedule.h"

namespace medhpc {
namespace {

constexpr int kPerturbWarps = 8;  // directions per block of spsa_perturb
constexpr int64_t kMaxGridYZ = 65535;

template <typename scalar_t>
__global__ void __launch_bounds__(kPerturbWarps * 32)
    spsa_perturb_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t D,
                        int64_t first, int64_t count, double delta, uint64_t seed,
                        uint32_t offset, double clip_min, double clip_max) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tile = blockIdx.x, b = blockIdx.z;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kPerturbWarps + threadIdx.x / 32;
  if (i >= count) return;
  const int lane = threadIdx.x & 31;
  const acc_t d = static_cast<acc_t>(delta);
  const acc_t lo = static_cast<acc_t>(clip_min), hi = static_cast<acc_t>(clip_max);
  const Philox4 blk = spsa_block(seed, offset, tile, lane, first + i, b);
  const scalar_t* xb = x + b * D;
  scalar_t* plus = out + (b * 2 * count + 2 * i) * D;
  scalar_t* minus = plus + D;
#pragma unroll 4
  for (int bit = 0; bit < 128; ++bit) {
    const int64_t e = tile * kSpsaTile + bit * kSpsaLanes + lane;
    if (e >= D) break;
    const acc_t v = rademacher_sign<acc_t>(blk, bit);
    const acc_t xv = static_cast<acc_t>(xb[e]);
    plus[e] = static_cast<scalar_t>(clip(xv + d * v, lo, hi));
    minus[e] = static_cast<scalar_t>(clip(xv - d * v, lo, hi));
  }
}

// One block per (tile, image), kSpsaReduceThreads threads; the schedule (who draws which
// Philox block, where it lives in shared memory, which elements a thread sums) is in
// common/spsa_reduce_schedule.h, which the host emulation _spsa_reduce_schedule also runs.
template <typename scalar_t>
__global__ void __launch_bounds__(kSpsaReduceThreads)
    spsa_reduce_kernel(const scalar_t* __restrict__ losses, scalar_t* __restrict__ grad,
                       int64_t D, int64_t first, int64_t count, double delta, uint64_t seed,
                       uint32_t offset, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ uint32_t words[kSpsaReduceBuffers][kSpsaReduceSlots];
  const int64_t tile = blockIdx.x, b = blockIdx.y;
  const int t = threadIdx.x;
  const acc_t scale = spsa_reduce_scale<acc_t>(delta, total);
  acc_t acc[32];
#pragma unroll
  for (int j = 0; j < 32; ++j) acc[j] = 0;
  const scalar_t* lb = losses + b * 2 * count;
  const int64_t groups = spsa_reduce_groups(count);
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t* buf = words[g % kSpsaReduceBuffers];
    const int n = spsa_reduce_group_size(g, count);
    const int64_t i0 = g * kSpsaReduceGroup;
    spsa_reduce_draw(buf, t, seed, offset, tile, b, first + i0, n);
    __syncthreads();  // one per group: the buffers alternate (see the header)
    spsa_reduce_accumulate(acc, buf, t, lb + 2 * i0, n, scale);
  }
  spsa_reduce_store(grad + b * D, acc, t, tile, D);
}

void check_perturb_cuda(const at::Tensor& x, int64_t first, int64_t count, double delta,
                        int64_t seed, int64_t offset, double clip_min, double clip_max) {
  check_spsa_perturb_inputs(x, delta, clip_min, clip_max);
  const int64_t B = x.size(0), D = B > 0 ? x.numel() / B : 0;
  check_spsa_stream("spsa_perturb", first, count, B, D, seed, offset);
  TORCH_CHECK(B <= kMaxGridYZ, "spsa_perturb on CUDA: at most ", kMaxGridYZ,
              " images per call, got ", B, "; chunk the batch");
  TORCH_CHECK((count + kPerturbWarps - 1) / kPerturbWarps <= kMaxGridYZ,
              "spsa_perturb on CUDA: count ", count, " too large; chunk the directions");
}

// Writes the probes into `out` (already checked to fit x).
void spsa_perturb_into(const at::Tensor& x_in, int64_t first, int64_t count, double delta,
                       int64_t seed, int64_t offset, double clip_min, double clip_max,
                       at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), D = B > 0 ? x.numel() / B : 0;
  if (out.numel() == 0) return;
  const dim3 grid((D + kSpsaTile - 1) / kSpsaTile, (count + kPerturbWarps - 1) / kPerturbWarps, B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spsa_perturb_cuda",
                                  [&] {
                                    spsa_perturb_kernel<scalar_t>
                                        <<<grid, kPerturbWarps * 32, 0, stream>>>(
                                            x.const_data_ptr<scalar_t>(),
                                            out.mutable_data_ptr<scalar_t>(), D, first, count,
                                            delta, static_cast<uint64_t>(seed),
                                            static_cast<uint32_t>(offset), clip_min, clip_max);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
}

at::Tensor spsa_perturb_cuda(const at::Tensor& x, int64_t first, int64_t count, double delta,
                             int64_t seed, int64_t offset, double clip_min, double clip_max) {
  check_perturb_cuda(x, first, count, delta, seed, offset, clip_min, clip_max);
  at::Tensor out = at::empty(spsa_probe_shape(x, count),
                             x.options().memory_format(at::MemoryFormat::Contiguous));
  spsa_perturb_into(x, first, count, delta, seed, offset, clip_min, clip_max, out);
  return out;
}

void spsa_perturb_out_cuda(const at::Tensor& x, int64_t first, int64_t count, double delta,
                           int64_t seed, int64_t offset, double clip_min, double clip_max,
                           at::Tensor out) {
  check_perturb_cuda(x, first, count, delta, seed, offset, clip_min, clip_max);
  check_spsa_out(out, x, count);
  spsa_perturb_into(x, first, count, delta, seed, offset, clip_min, clip_max, out);
}

at::Tensor spsa_reduce_cuda(const at::Tensor& losses_in, at::IntArrayRef image_shape,
                            int64_t first, double delta, int64_t seed, int64_t offset,
                            int64_t total) {
  check_spsa_reduce_inputs(losses_in, image_shape, delta, total);
  const c10::cuda::CUDAGuard guard(losses_in.device());
  const at::Tensor losses = losses_in.contiguous();
  const int64_t B = losses.size(0), count = losses.size(1) / 2;
  const int64_t D = c10::multiply_integers(image_shape);
  check_spsa_stream("spsa_reduce", first, count, B, D, seed, offset);
  TORCH_CHECK(B <= kMaxGridYZ, "spsa_reduce on CUDA: at most ", kMaxGridYZ,
              " images per call, got ", B, "; chunk the batch");
  at::Tensor grad = at::empty(spsa_grad_shape(B, image_shape), losses.options());
  if (grad.numel() == 0) return grad;
  const dim3 grid((D + kSpsaTile - 1) / kSpsaTile, B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, losses.scalar_type(),
                                  "spsa_reduce_cuda", [&] {
                                    spsa_reduce_kernel<scalar_t>
                                        <<<grid, kSpsaReduceThreads, 0, stream>>>(
                                            losses.const_data_ptr<scalar_t>(),
                                            grad.mutable_data_ptr<scalar_t>(), D, first, count,
                                            delta, static_cast<uint64_t>(seed),
                                            static_cast<uint32_t>(offset), total);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(medhpc, CUDA, m) {
  m.impl("spsa_perturb", &spsa_perturb_cuda);
  m.impl("spsa_perturb_out", &spsa_perturb_out_cuda);
  m.impl("spsa_reduce", &spsa_reduce_cuda);
}

}  // namespace medhpc
