// CUDA kernels of medhpc::vib_reparam and medhpc::_vib_reparam_backward.
//
// One block per example, threads across the latent dimension: writes of z are coalesced along
// K, and each example's KL is reduced in shared memory in a fixed tree order (no atomics), so
// results are bit-for-bit reproducible. Half and bfloat16 inputs are computed in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "common/checks.h"
#include "common/vib_math.h"

namespace medhpc {
namespace {

constexpr int kThreads = 256;  // a power of two: the KL tree reduction relies on it

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    vib_reparam_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ a,
                       scalar_t* __restrict__ z, scalar_t* __restrict__ kl, int64_t S, int64_t B,
                       int64_t K, uint64_t seed, uint64_t offset, bool relu, bool kl_mean) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t b = blockIdx.x;
  acc_t kl_part = 0;
  for (int64_t j = threadIdx.x; j < K; j += kThreads) {
    const acc_t m = static_cast<acc_t>(mu[b * K + j]);
    const acc_t sg = vib_sigma<acc_t>(static_cast<acc_t>(a[b * K + j]), relu);
    kl_part += acc_t(0.5) * (m * m + sg * sg - acc_t(1)) - log(sg);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t idx = (s * B + b) * K + j;
      z[idx] = static_cast<scalar_t>(m + sg * philox_normal<acc_t>(seed, offset, idx));
    }
  }
  partial[threadIdx.x] = kl_part;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    kl[b] = static_cast<scalar_t>(kl_mean ? partial[0] / acc_t(K) : partial[0]);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    vib_reparam_backward_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ gkl,
                                const scalar_t* __restrict__ mu, const scalar_t* __restrict__ a,
                                scalar_t* __restrict__ gmu, scalar_t* __restrict__ ga, int64_t S,
                                int64_t B, int64_t K, uint64_t seed, uint64_t offset, bool relu,
                                bool kl_mean) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x;
  const acc_t c = kl_mean ? static_cast<acc_t>(gkl[b]) / acc_t(K) : static_cast<acc_t>(gkl[b]);
  for (int64_t j = threadIdx.x; j < K; j += kThreads) {
    acc_t sum_g = 0, sum_ge = 0;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t idx = (s * B + b) * K + j;
      const acc_t g = static_cast<acc_t>(gz[idx]);
      sum_g += g;
      sum_ge += g * philox_normal<acc_t>(seed, offset, idx);
    }
    const acc_t m = static_cast<acc_t>(mu[b * K + j]);
    const acc_t av = static_cast<acc_t>(a[b * K + j]);
    const acc_t sg = vib_sigma<acc_t>(av, relu);
    gmu[b * K + j] = static_cast<scalar_t>(sum_g + c * m);
    const acc_t g_sigma = sum_ge + c * (sg - acc_t(1) / sg);
    ga[b * K + j] = static_cast<scalar_t>(g_sigma * vib_dsigma_da<acc_t>(av, relu));
  }
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_cuda(const at::Tensor& mu_in,
                                                    const at::Tensor& a_in, int64_t samples,
                                                    int64_t seed, int64_t offset, bool relu,
                                                    bool kl_mean) {
  check_vib_inputs(mu_in, a_in, seed, offset);
  check_vib_samples(samples);
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const int64_t B = mu.size(0), K = mu.size(1);
  at::Tensor z = at::empty({samples, B, K}, mu.options());
  at::Tensor kl = at::empty({B}, mu.options());
  if (B == 0) return {z, kl};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "vib_reparam_cuda",
                                  [&] {
                                    vib_reparam_kernel<scalar_t><<<B, kThreads, 0, stream>>>(
                                        mu.const_data_ptr<scalar_t>(),
                                        a.const_data_ptr<scalar_t>(),
                                        z.mutable_data_ptr<scalar_t>(),
                                        kl.mutable_data_ptr<scalar_t>(), samples, B, K,
                                        static_cast<uint64_t>(seed),
                                        static_cast<uint64_t>(offset), relu, kl_mean);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_backward_cuda(
    const at::Tensor& grad_z_in, const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
    const at::Tensor& a_in, int64_t seed, int64_t offset, bool relu, bool kl_mean) {
  check_vib_inputs(mu_in, a_in, seed, offset);
  check_vib_backward_inputs(grad_z_in, grad_kl_in, mu_in);
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor grad_z = grad_z_in.contiguous();
  const at::Tensor grad_kl = grad_kl_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const int64_t S = grad_z.size(0), B = mu.size(0), K = mu.size(1);
  at::Tensor grad_mu = at::empty_like(mu);
  at::Tensor grad_a = at::empty_like(a);
  if (B == 0) return {grad_mu, grad_a};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, mu.scalar_type(), "vib_reparam_backward_cuda", [&] {
        vib_reparam_backward_kernel<scalar_t><<<B, kThreads, 0, stream>>>(
            grad_z.const_data_ptr<scalar_t>(), grad_kl.const_data_ptr<scalar_t>(),
            mu.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
            grad_mu.mutable_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(), S, B, K,
            static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), relu, kl_mean);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_mu, grad_a};
}

}  // namespace

TORCH_LIBRARY_IMPL(medhpc, CUDA, m) {
  m.impl("vib_reparam", &vib_reparam_cuda);
  m.impl("_vib_reparam_backward", &vib_reparam_backward_cuda);
}

}  // namespace medhpc
