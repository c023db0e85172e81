// Argument checks shared by the CPU and CUDA kernels: anything a caller can get wrong is a
// TORCH_CHECK with a message that names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace medhpc {

inline void check_vib_inputs(const at::Tensor& mu, const at::Tensor& a, int64_t seed,
                             int64_t offset, int64_t share_rows) {
  TORCH_CHECK(mu.dim() == 2, "vib_reparam: mu must be 2-D (batch, latent), got shape ",
              mu.sizes());
  TORCH_CHECK(a.sizes() == mu.sizes(), "vib_reparam: a must have mu's shape ", mu.sizes(),
              ", got ", a.sizes());
  TORCH_CHECK(a.scalar_type() == mu.scalar_type(), "vib_reparam: a has dtype ",
              a.scalar_type(), " but mu has ", mu.scalar_type());
  TORCH_CHECK(a.device() == mu.device(), "vib_reparam: a is on ", a.device(),
              " but mu is on ", mu.device());
  TORCH_CHECK(seed >= 0, "vib_reparam: seed must be >= 0, got ", seed);
  TORCH_CHECK(offset >= 0, "vib_reparam: offset must be >= 0, got ", offset);
  TORCH_CHECK(share_rows >= 1, "vib_reparam: share_rows must be >= 1, got ", share_rows,
              " (rows b and b' share noise iff b / share_rows == b' / share_rows)");
}

inline void check_vib_samples(int64_t samples) {
  TORCH_CHECK(samples >= 1, "vib_reparam: samples must be >= 1, got ", samples);
}

inline void check_vib_backward_inputs(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                      const at::Tensor& mu) {
  TORCH_CHECK(grad_z.dim() == 3 && grad_z.size(1) == mu.size(0) && grad_z.size(2) == mu.size(1),
              "_vib_reparam_backward: grad_z must be (samples, ", mu.size(0), ", ", mu.size(1),
              "), got ", grad_z.sizes());
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == mu.size(0),
              "_vib_reparam_backward: grad_kl must be (", mu.size(0), ",), got ",
              grad_kl.sizes());
  TORCH_CHECK(grad_z.scalar_type() == mu.scalar_type() &&
                  grad_kl.scalar_type() == mu.scalar_type(),
              "_vib_reparam_backward: gradients must have mu's dtype ", mu.scalar_type());
  TORCH_CHECK(grad_z.device() == mu.device() && grad_kl.device() == mu.device(),
              "_vib_reparam_backward: gradients must be on mu's device ", mu.device());
}

inline void check_spsa_stream(const char* op, int64_t first, int64_t count, int64_t batch,
                              int64_t numel, int64_t seed, int64_t offset) {
  TORCH_CHECK(first >= 0, op, ": first must be >= 0, got ", first);
  TORCH_CHECK(count >= 1, op, ": count must be >= 1, got ", count);
  TORCH_CHECK(first + count <= (int64_t{1} << 32), op, ": direction index first + count = ",
              first + count, " exceeds 2^32");
  TORCH_CHECK(batch < (int64_t{1} << 32), op, ": batch of ", batch, " images exceeds 2^32");
  TORCH_CHECK(numel <= (int64_t{1} << 37), op, ": ", numel, " elements per image exceed 2^37");
  TORCH_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  TORCH_CHECK(offset >= 0 && offset < (int64_t{1} << 32), op,
              ": offset must be in [0, 2^32), got ", offset);
}

inline void check_spsa_perturb_inputs(const at::Tensor& x, double delta, double clip_min,
                                      double clip_max) {
  TORCH_CHECK(x.dim() >= 2, "spsa_perturb: x must be a batch (B, ...) of at least 2 dims, got ",
              x.sizes());
  TORCH_CHECK(delta > 0, "spsa_perturb: delta must be > 0, got ", delta);
  TORCH_CHECK(!(clip_min > clip_max), "spsa_perturb: clip_min ", clip_min, " > clip_max ",
              clip_max);
}

// Shape of spsa_perturb's output: (B, 2*count, *x.shape[1:]).
inline std::vector<int64_t> spsa_probe_shape(const at::Tensor& x, int64_t count) {
  std::vector<int64_t> shape{x.size(0), 2 * count};
  shape.insert(shape.end(), x.sizes().begin() + 1, x.sizes().end());
  return shape;
}

// Shape of spsa_reduce's output: (B, *image_shape).
inline std::vector<int64_t> spsa_grad_shape(int64_t batch, at::IntArrayRef image_shape) {
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), image_shape.begin(), image_shape.end());
  return shape;
}

// `out` of spsa_perturb_out: (B, 2*count, *x.shape[1:]), x's dtype and device, contiguous.
inline void check_spsa_out(const at::Tensor& out, const at::Tensor& x, int64_t count) {
  const std::vector<int64_t> want = spsa_probe_shape(x, count);
  TORCH_CHECK(out.sizes() == at::IntArrayRef(want), "spsa_perturb_out: out must have shape ",
              at::IntArrayRef(want), ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              "spsa_perturb_out: out must have x's dtype ", x.scalar_type(), " and device ",
              x.device(), ", got ", out.scalar_type(), " on ", out.device());
  TORCH_CHECK(out.is_contiguous(), "spsa_perturb_out: out must be contiguous");
}

inline void check_spsa_reduce_inputs(const at::Tensor& losses, at::IntArrayRef image_shape,
                                     double delta, int64_t total) {
  TORCH_CHECK(losses.dim() == 2 && losses.size(1) % 2 == 0 && losses.size(1) > 0,
              "spsa_reduce: losses must be (B, 2*count) with +/- pairs adjacent, got ",
              losses.sizes());
  TORCH_CHECK(!image_shape.empty(), "spsa_reduce: image_shape must not be empty");
  for (const int64_t d : image_shape) {
    TORCH_CHECK(d >= 0, "spsa_reduce: image_shape must be non-negative, got ", image_shape);
  }
  TORCH_CHECK(delta > 0, "spsa_reduce: delta must be > 0, got ", delta);
  TORCH_CHECK(total >= 1, "spsa_reduce: total must be >= 1, got ", total);
}

}  // namespace medhpc
