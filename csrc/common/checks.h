// Argument checks shared by the CPU and CUDA kernels: anything a caller can get wrong is a
// TORCH_CHECK with a message that names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace medhpc {

inline void check_vib_inputs(const at::Tensor& mu, const at::Tensor& a, int64_t seed,
                             int64_t offset) {
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

}  // namespace medhpc
