// CPU kernels of medhpc::vib_reparam and medhpc::_vib_reparam_backward (OpenMP through
// at::parallel_for over the batch). Each example's KL is summed in a fixed order, so results
// are bit-for-bit reproducible whatever the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/vib_math.h"

namespace medhpc {
namespace {

template <typename scalar_t>
void vib_reparam_kernel(const scalar_t* mu, const scalar_t* a, scalar_t* z, scalar_t* kl,
                        int64_t S, int64_t B, int64_t K, uint64_t seed, uint64_t offset,
                        bool relu, bool kl_mean) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> sigma(K);
    for (int64_t b = b0; b < b1; ++b) {
      acc_t kl_sum = 0;
      for (int64_t j = 0; j < K; ++j) {
        const acc_t m = mu[b * K + j];
        const acc_t s = vib_sigma<acc_t>(a[b * K + j], relu);
        sigma[j] = s;
        kl_sum += acc_t(0.5) * (m * m + s * s - acc_t(1)) - std::log(s);
      }
      kl[b] = kl_mean ? kl_sum / acc_t(K) : kl_sum;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t row = (s * B + b) * K;
        for (int64_t j = 0; j < K; ++j) {
          const acc_t eps = philox_normal<acc_t>(seed, offset, static_cast<uint64_t>(row + j));
          z[row + j] = static_cast<acc_t>(mu[b * K + j]) + sigma[j] * eps;
        }
      }
    }
  });
}

template <typename scalar_t>
void vib_reparam_backward_kernel(const scalar_t* gz, const scalar_t* gkl, const scalar_t* mu,
                                 const scalar_t* a, scalar_t* gmu, scalar_t* ga, int64_t S,
                                 int64_t B, int64_t K, uint64_t seed, uint64_t offset,
                                 bool relu, bool kl_mean) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> sum_g(K), sum_ge(K);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(sum_g.begin(), sum_g.end(), acc_t(0));
      std::fill(sum_ge.begin(), sum_ge.end(), acc_t(0));
      for (int64_t s = 0; s < S; ++s) {
        const int64_t row = (s * B + b) * K;
        for (int64_t j = 0; j < K; ++j) {
          const acc_t g = gz[row + j];
          sum_g[j] += g;
          sum_ge[j] += g * philox_normal<acc_t>(seed, offset, static_cast<uint64_t>(row + j));
        }
      }
      const acc_t c = kl_mean ? static_cast<acc_t>(gkl[b]) / acc_t(K)
                              : static_cast<acc_t>(gkl[b]);
      for (int64_t j = 0; j < K; ++j) {
        const acc_t m = mu[b * K + j];
        const acc_t av = a[b * K + j];
        const acc_t sg = vib_sigma<acc_t>(av, relu);
        gmu[b * K + j] = sum_g[j] + c * m;
        const acc_t g_sigma = sum_ge[j] + c * (sg - acc_t(1) / sg);
        ga[b * K + j] = g_sigma * vib_dsigma_da<acc_t>(av, relu);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_cpu(const at::Tensor& mu_in, const at::Tensor& a_in,
                                                   int64_t samples, int64_t seed, int64_t offset,
                                                   bool relu, bool kl_mean) {
  check_vib_inputs(mu_in, a_in, seed, offset);
  check_vib_samples(samples);
  TORCH_CHECK(mu_in.scalar_type() == at::kFloat || mu_in.scalar_type() == at::kDouble,
              "vib_reparam on CPU takes float32 or float64, got ", mu_in.scalar_type());
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const int64_t B = mu.size(0), K = mu.size(1);
  at::Tensor z = at::empty({samples, B, K}, mu.options());
  at::Tensor kl = at::empty({B}, mu.options());
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vib_reparam_cpu", [&] {
    vib_reparam_kernel<scalar_t>(mu.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                                 z.mutable_data_ptr<scalar_t>(), kl.mutable_data_ptr<scalar_t>(),
                                 samples, B, K, static_cast<uint64_t>(seed),
                                 static_cast<uint64_t>(offset), relu, kl_mean);
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_backward_cpu(
    const at::Tensor& grad_z_in, const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
    const at::Tensor& a_in, int64_t seed, int64_t offset, bool relu, bool kl_mean) {
  check_vib_inputs(mu_in, a_in, seed, offset);
  check_vib_backward_inputs(grad_z_in, grad_kl_in, mu_in);
  TORCH_CHECK(mu_in.scalar_type() == at::kFloat || mu_in.scalar_type() == at::kDouble,
              "_vib_reparam_backward on CPU takes float32 or float64, got ", mu_in.scalar_type());
  const at::Tensor grad_z = grad_z_in.contiguous();
  const at::Tensor grad_kl = grad_kl_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const int64_t S = grad_z.size(0), B = mu.size(0), K = mu.size(1);
  at::Tensor grad_mu = at::empty_like(mu);
  at::Tensor grad_a = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vib_reparam_backward_cpu", [&] {
    vib_reparam_backward_kernel<scalar_t>(
        grad_z.const_data_ptr<scalar_t>(), grad_kl.const_data_ptr<scalar_t>(),
        mu.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
        grad_mu.mutable_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(), S, B, K,
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), relu, kl_mean);
  });
  return {grad_mu, grad_a};
}

}  // namespace

TORCH_LIBRARY_IMPL(medhpc, CPU, m) {
  m.impl("vib_reparam", &vib_reparam_cpu);
  m.impl("_vib_reparam_backward", &vib_reparam_backward_cpu);
}

}  // namespace medhpc
