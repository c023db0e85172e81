// CPU kernels of medhpc::spsa_perturb and medhpc::spsa_reduce (OpenMP via at::parallel_for).
// Directions are regenerated tile by tile from Philox and never stored.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/rademacher.h"
#include "common/spsa_reduce_schedule.h"

namespace medhpc {
namespace {

// The 4096 signs of one tile of direction k, in element order. Lanes run innermost, so the
// expansion writes contiguously and the loops that consume the signs vectorise.
template <typename acc_t>
void tile_signs(acc_t* signs, uint64_t seed, uint32_t offset, int64_t tile, int64_t k, int64_t b) {
  uint32_t words[4][kSpsaLanes];
  for (int64_t lane = 0; lane < kSpsaLanes; ++lane) {
    const Philox4 blk = spsa_block(seed, offset, tile, lane, k, b);
    words[0][lane] = blk.x0;
    words[1][lane] = blk.x1;
    words[2][lane] = blk.x2;
    words[3][lane] = blk.x3;
  }
  for (int bit = 0; bit < 128; ++bit) {
    const uint32_t* w = words[bit >> 5];
    const int shift = bit & 31;
    acc_t* out = signs + bit * kSpsaLanes;
    for (int64_t lane = 0; lane < kSpsaLanes; ++lane) {
      out[lane] = static_cast<acc_t>(static_cast<int>((w[lane] >> shift) & 1u) * 2 - 1);
    }
  }
}

template <typename scalar_t>
void spsa_perturb_kernel(const scalar_t* x, scalar_t* out, int64_t B, int64_t D, int64_t first,
                         int64_t count, double delta, uint64_t seed, uint32_t offset,
                         double clip_min, double clip_max) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t d = static_cast<acc_t>(delta);
  const acc_t lo = static_cast<acc_t>(clip_min), hi = static_cast<acc_t>(clip_max);
  const int64_t tiles = (D + kSpsaTile - 1) / kSpsaTile;
  at::parallel_for(0, B * count, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> signs(kSpsaTile);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / count, i = r % count;
      const scalar_t* xb = x + b * D;
      scalar_t* plus = out + (b * 2 * count + 2 * i) * D;
      scalar_t* minus = plus + D;
      for (int64_t t = 0; t < tiles; ++t) {
        tile_signs(signs.data(), seed, offset, t, first + i, b);
        const int64_t e0 = t * kSpsaTile, n = std::min(D - e0, kSpsaTile);
        const acc_t* v = signs.data();
        for (int64_t l = 0; l < n; ++l) {
          const acc_t xv = static_cast<acc_t>(xb[e0 + l]);
          plus[e0 + l] = static_cast<scalar_t>(std::min(std::max(xv + d * v[l], lo), hi));
          minus[e0 + l] = static_cast<scalar_t>(std::min(std::max(xv - d * v[l], lo), hi));
        }
      }
    }
  });
}

template <typename scalar_t>
void spsa_reduce_kernel(const scalar_t* losses, scalar_t* grad, int64_t B, int64_t D,
                        int64_t first, int64_t count, double delta, uint64_t seed,
                        uint32_t offset, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = spsa_reduce_scale<acc_t>(delta, total);
  const int64_t tiles = (D + kSpsaTile - 1) / kSpsaTile;
  at::parallel_for(0, B * tiles, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> signs(kSpsaTile), acc(kSpsaTile);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / tiles, t = r % tiles;
      const int64_t e0 = t * kSpsaTile, n = std::min(D - e0, kSpsaTile);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t i = 0; i < count; ++i) {
        const acc_t c = (static_cast<acc_t>(losses[b * 2 * count + 2 * i]) -
                         static_cast<acc_t>(losses[b * 2 * count + 2 * i + 1])) *
                        scale;
        tile_signs(signs.data(), seed, offset, t, first + i, b);
        const acc_t* v = signs.data();
        acc_t* a = acc.data();
        for (int64_t l = 0; l < n; ++l) a[l] += c * v[l];
      }
      for (int64_t l = 0; l < n; ++l) grad[b * D + e0 + l] = static_cast<scalar_t>(acc[l]);
    }
  });
}

// Writes the probes into `out` (already checked to fit x).
void spsa_perturb_into(const at::Tensor& x_in, int64_t first, int64_t count, double delta,
                       int64_t seed, int64_t offset, double clip_min, double clip_max,
                       at::Tensor& out) {
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), D = B > 0 ? x.numel() / B : 0;
  if (out.numel() == 0) return;
  // Half and bfloat16 as on CUDA: computed in float (opmath), rounded once.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spsa_perturb_cpu", [&] {
    spsa_perturb_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                  B, D, first, count, delta, static_cast<uint64_t>(seed),
                                  static_cast<uint32_t>(offset), clip_min, clip_max);
  });
}

void check_perturb_cpu(const at::Tensor& x, int64_t first, int64_t count, double delta,
                       int64_t seed, int64_t offset, double clip_min, double clip_max) {
  check_spsa_perturb_inputs(x, delta, clip_min, clip_max);
  const int64_t B = x.size(0), D = B > 0 ? x.numel() / B : 0;
  check_spsa_stream("spsa_perturb", first, count, B, D, seed, offset);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "spsa_perturb takes a floating-point x, got ", x.scalar_type());
}

at::Tensor spsa_perturb_cpu(const at::Tensor& x, int64_t first, int64_t count, double delta,
                            int64_t seed, int64_t offset, double clip_min, double clip_max) {
  check_perturb_cpu(x, first, count, delta, seed, offset, clip_min, clip_max);
  at::Tensor out = at::empty(spsa_probe_shape(x, count),
                             x.options().memory_format(at::MemoryFormat::Contiguous));
  spsa_perturb_into(x, first, count, delta, seed, offset, clip_min, clip_max, out);
  return out;
}

void spsa_perturb_out_cpu(const at::Tensor& x, int64_t first, int64_t count, double delta,
                          int64_t seed, int64_t offset, double clip_min, double clip_max,
                          at::Tensor out) {
  check_perturb_cpu(x, first, count, delta, seed, offset, clip_min, clip_max);
  check_spsa_out(out, x, count);
  spsa_perturb_into(x, first, count, delta, seed, offset, clip_min, clip_max, out);
}

at::Tensor spsa_reduce_cpu(const at::Tensor& losses_in, at::IntArrayRef image_shape,
                           int64_t first, double delta, int64_t seed, int64_t offset,
                           int64_t total) {
  check_spsa_reduce_inputs(losses_in, image_shape, delta, total);
  const at::Tensor losses = losses_in.contiguous();
  const int64_t B = losses.size(0), count = losses.size(1) / 2;
  const int64_t D = c10::multiply_integers(image_shape);
  check_spsa_stream("spsa_reduce", first, count, B, D, seed, offset);
  TORCH_CHECK(at::isFloatingType(losses.scalar_type()),
              "spsa_reduce takes floating-point losses, got ", losses.scalar_type());
  at::Tensor grad = at::empty(spsa_grad_shape(B, image_shape), losses.options());
  if (grad.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, losses.scalar_type(), "spsa_reduce_cpu",
                                  [&] {
    spsa_reduce_kernel<scalar_t>(losses.const_data_ptr<scalar_t>(),
                                 grad.mutable_data_ptr<scalar_t>(), B, D, first, count, delta,
                                 static_cast<uint64_t>(seed), static_cast<uint32_t>(offset), total);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(medhpc, CPU, m) {
  m.impl("spsa_perturb", &spsa_perturb_cpu);
  m.impl("spsa_perturb_out", &spsa_perturb_out_cpu);
  m.impl("spsa_reduce", &spsa_reduce_cpu);
}

}  // namespace medhpc
