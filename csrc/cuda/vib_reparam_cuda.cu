// CUDA kernels of medhpc::vib_reparam and medhpc::_vib_reparam_backward.
//
// Forward in two launches: one block per example computes sigma (into a float workspace) and
// reduces the example's KL in shared memory in a fixed tree order (no atomics); then one thread
// per Box-Muller pair of the noise stream draws one Philox block, both of its normals, and
// writes them to every row that shares them (vib_forward_pair). The backward gives each thread
// two neighbouring stream positions of one sample for one row of their groups and sums over the
// samples in order (vib_backward_pair). The per-thread bodies and the index maths live in
// common/vib_schedule.h, where the CPU op _vib_reparam_cuda_schedule runs the same bodies for a
// CPU test. Results are bit-identical run to run on one device; against the CPU kernel and the
// reference they agree within rounding only (nvcc contracts to FMA, CUDA's logf/sinf/cosf are
// not the CPU's, and the KL sums in another order). Half and bfloat16 are computed in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common/checks.h"
#include "common/vib_math.h"
#include "common/vib_schedule.h"

namespace medhpc {
namespace {

constexpr int kThreads = 256;  // a power of two: the KL tree reduction relies on it
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

int64_t grid_for(int64_t threads) {
  return std::max<int64_t>(1, std::min<int64_t>((threads + kThreads - 1) / kThreads, kMaxBlocks));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    vib_sigma_kl_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ a,
                        at::opmath_type<scalar_t>* __restrict__ sigma, scalar_t* __restrict__ kl,
                        int64_t K, bool relu, bool kl_mean) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t b = blockIdx.x;
  acc_t kl_part = 0;
  for (int64_t j = threadIdx.x; j < K; j += kThreads) {
    const acc_t m = static_cast<acc_t>(mu[b * K + j]);
    const acc_t sg = vib_sigma<acc_t>(static_cast<acc_t>(a[b * K + j]), relu);
    sigma[b * K + j] = sg;
    kl_part += acc_t(0.5) * (m * m + sg * sg - acc_t(1)) - log(sg);
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
    vib_noise_kernel(const scalar_t* __restrict__ mu,
                     const at::opmath_type<scalar_t>* __restrict__ sigma,
                     scalar_t* __restrict__ z, const VibShape sh, uint64_t seed, uint64_t offset) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pairs = vib_pair_count(sh);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += stride) {
    vib_forward_pair<scalar_t, acc_t>(p, sh, mu, sigma, z, seed, offset, nullptr);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    vib_reparam_backward_kernel(const scalar_t* __restrict__ gz, const scalar_t* __restrict__ gkl,
                                const scalar_t* __restrict__ mu, const scalar_t* __restrict__ a,
                                scalar_t* __restrict__ gmu, scalar_t* __restrict__ ga,
                                const VibShape sh, uint64_t seed, uint64_t offset, bool relu,
                                bool kl_mean) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t columns = vib_backward_columns(sh);
  const int64_t threads = sh.share * columns;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < threads;
       t += stride) {
    vib_backward_pair<scalar_t, acc_t>(t / columns, t % columns, sh, gz, gkl, mu, a, gmu, ga,
                                       seed, offset, relu, kl_mean, nullptr);
  }
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_cuda(const at::Tensor& mu_in,
                                                    const at::Tensor& a_in, int64_t samples,
                                                    int64_t seed, int64_t offset, bool relu,
                                                    bool kl_mean, int64_t share_rows) {
  check_vib_inputs(mu_in, a_in, seed, offset, share_rows);
  check_vib_samples(samples);
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const VibShape sh = vib_shape(samples, mu.size(0), mu.size(1), share_rows);
  at::Tensor z = at::empty({samples, sh.B, sh.K}, mu.options());
  at::Tensor kl = at::empty({sh.B}, mu.options());
  if (sh.B == 0) return {z, kl};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, mu.scalar_type(), "vib_reparam_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor sigma = at::empty({sh.B, sh.K}, mu.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        vib_sigma_kl_kernel<scalar_t><<<sh.B, kThreads, 0, stream>>>(
            mu.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
            sigma.mutable_data_ptr<acc_t>(), kl.mutable_data_ptr<scalar_t>(), sh.K, relu,
            kl_mean);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (sh.positions == 0) return;
        vib_noise_kernel<scalar_t><<<grid_for(vib_pair_count(sh)), kThreads, 0, stream>>>(
            mu.const_data_ptr<scalar_t>(), sigma.const_data_ptr<acc_t>(),
            z.mutable_data_ptr<scalar_t>(), sh, static_cast<uint64_t>(seed),
            static_cast<uint64_t>(offset));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_backward_cuda(
    const at::Tensor& grad_z_in, const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
    const at::Tensor& a_in, int64_t seed, int64_t offset, bool relu, bool kl_mean,
    int64_t share_rows) {
  check_vib_inputs(mu_in, a_in, seed, offset, share_rows);
  check_vib_backward_inputs(grad_z_in, grad_kl_in, mu_in);
  const c10::cuda::CUDAGuard guard(mu_in.device());
  const at::Tensor grad_z = grad_z_in.contiguous();
  const at::Tensor grad_kl = grad_kl_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const VibShape sh = vib_shape(grad_z.size(0), mu.size(0), mu.size(1), share_rows);
  at::Tensor grad_mu = at::empty_like(mu);
  at::Tensor grad_a = at::empty_like(a);
  if (sh.B == 0 || sh.K == 0) return {grad_mu, grad_a};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t threads = sh.share * vib_backward_columns(sh);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, mu.scalar_type(), "vib_reparam_backward_cuda", [&] {
        vib_reparam_backward_kernel<scalar_t><<<grid_for(threads), kThreads, 0, stream>>>(
            grad_z.const_data_ptr<scalar_t>(), grad_kl.const_data_ptr<scalar_t>(),
            mu.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
            grad_mu.mutable_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<scalar_t>(), sh,
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
