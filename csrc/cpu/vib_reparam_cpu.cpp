// CPU kernels of medhpc::vib_reparam and medhpc::_vib_reparam_backward: vectorised
// (cpu/vib_reparam_kernel.h), threads over noise rows through at::parallel_for. The widest copy
// the CPU runs is used: AVX-512 (vib_reparam_cpu_avx512.cpp), AVX2 + FMA
// (vib_reparam_cpu_avx2.cpp) or the DEFAULT one here; MEDHPC_CPU_VEC=avx2 or =default caps it.
// Each gives bit-identical results run to run and for any thread count; the copies agree with
// each other and with the reference within rounding (Sleef vs std:: in the last ulp).
//
// Also two test-only ops: _vib_reparam_cuda_schedule runs the CUDA kernels' per-thread bodies
// (common/vib_schedule.h) serially on the CPU, so that a CPU test checks the CUDA schedule, and
// _vib_philox_words returns the Philox words the kernels draw, for a bit-exact check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#define CPU_CAPABILITY DEFAULT
#define MEDHPC_VEC_NS vec_default
#include "cpu/vib_reparam_kernel.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "common/checks.h"

namespace medhpc {

#if defined(__x86_64__) && defined(__GNUC__)
#define MEDHPC_HAVE_X86_COPIES 1
#define MEDHPC_DECLARE_COPY(ns)                                                                \
  namespace ns {                                                                               \
  template <typename T>                                                                        \
  void vib_forward_rows(const T* mu, const T* a, T* z, T* kl, const VibShape& sh,              \
                        uint64_t seed, uint64_t offset, bool relu, bool kl_mean, int64_t g0,   \
                        int64_t g1);                                                           \
  template <typename T>                                                                        \
  void vib_backward_rows(const T* gz, const T* gkl, const T* mu, const T* a, T* gmu, T* ga,    \
                         const VibShape& sh, uint64_t seed, uint64_t offset, bool relu,        \
                         bool kl_mean, int64_t g0, int64_t g1);                                \
  void vib_philox_words(uint64_t seed, uint64_t offset, uint64_t first, int64_t count,         \
                        uint32_t* w0, uint32_t* w1);                                           \
  }
MEDHPC_DECLARE_COPY(vec_avx2)
MEDHPC_DECLARE_COPY(vec_avx512)
#undef MEDHPC_DECLARE_COPY
#endif

namespace {

enum class VecCopy { kDefault, kAvx2, kAvx512 };

// The widest copy the CPU runs; MEDHPC_CPU_VEC=default|avx2 caps it (to test the others).
VecCopy vec_copy() {
#ifdef MEDHPC_HAVE_X86_COPIES
  static const VecCopy copy = [] {
    const char* env = std::getenv("MEDHPC_CPU_VEC");
    const bool cap_default = env != nullptr && std::strcmp(env, "default") == 0;
    const bool cap_avx2 = env != nullptr && std::strcmp(env, "avx2") == 0;
    __builtin_cpu_init();  // libgcc's CPU model may not be filled in yet inside a dlopen'ed library
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vl");
    if (cap_default || !avx2) return VecCopy::kDefault;
    if (cap_avx2 || !avx512) return VecCopy::kAvx2;
    return VecCopy::kAvx512;
  }();
  return copy;
#else
  return VecCopy::kDefault;
#endif
}

#ifdef MEDHPC_HAVE_X86_COPIES
#define MEDHPC_CALL_COPY(fn, ...)                                 \
  switch (vec_copy()) {                                           \
    case VecCopy::kAvx512: vec_avx512::fn(__VA_ARGS__); break;    \
    case VecCopy::kAvx2: vec_avx2::fn(__VA_ARGS__); break;        \
    default: vec_default::fn(__VA_ARGS__); break;                 \
  }
#else
#define MEDHPC_CALL_COPY(fn, ...) vec_default::fn(__VA_ARGS__);
#endif

void check_cpu_dtype(const char* op, const at::Tensor& mu) {
  TORCH_CHECK(mu.scalar_type() == at::kFloat || mu.scalar_type() == at::kDouble, op,
              " on CPU takes float32 or float64, got ", mu.scalar_type(),
              " (medhpc.ops.vib_reparam computes half and bfloat16 inputs in float32)");
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_cpu(const at::Tensor& mu_in, const at::Tensor& a_in,
                                                   int64_t samples, int64_t seed, int64_t offset,
                                                   bool relu, bool kl_mean, int64_t share_rows) {
  check_vib_inputs(mu_in, a_in, seed, offset, share_rows);
  check_vib_samples(samples);
  check_cpu_dtype("vib_reparam", mu_in);
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const VibShape sh = vib_shape(samples, mu.size(0), mu.size(1), share_rows);
  at::Tensor z = at::empty({samples, sh.B, sh.K}, mu.options());
  at::Tensor kl = at::empty({sh.B}, mu.options());
  const auto s = static_cast<uint64_t>(seed);
  const auto o = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vib_reparam_cpu", [&] {
    const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
    const scalar_t* a_p = a.const_data_ptr<scalar_t>();
    scalar_t* z_p = z.mutable_data_ptr<scalar_t>();
    scalar_t* kl_p = kl.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, sh.G, 1, [&](int64_t g0, int64_t g1) {
      MEDHPC_CALL_COPY(vib_forward_rows<scalar_t>, mu_p, a_p, z_p, kl_p, sh, s, o, relu, kl_mean,
                       g0, g1)
    });
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> vib_reparam_backward_cpu(
    const at::Tensor& grad_z_in, const at::Tensor& grad_kl_in, const at::Tensor& mu_in,
    const at::Tensor& a_in, int64_t seed, int64_t offset, bool relu, bool kl_mean,
    int64_t share_rows) {
  check_vib_inputs(mu_in, a_in, seed, offset, share_rows);
  check_vib_backward_inputs(grad_z_in, grad_kl_in, mu_in);
  check_cpu_dtype("_vib_reparam_backward", mu_in);
  const at::Tensor grad_z = grad_z_in.contiguous();
  const at::Tensor grad_kl = grad_kl_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const VibShape sh = vib_shape(grad_z.size(0), mu.size(0), mu.size(1), share_rows);
  at::Tensor grad_mu = at::empty_like(mu);
  at::Tensor grad_a = at::empty_like(a);
  const auto s = static_cast<uint64_t>(seed);
  const auto o = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vib_reparam_backward_cpu", [&] {
    const scalar_t* gz_p = grad_z.const_data_ptr<scalar_t>();
    const scalar_t* gkl_p = grad_kl.const_data_ptr<scalar_t>();
    const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
    const scalar_t* a_p = a.const_data_ptr<scalar_t>();
    scalar_t* gmu_p = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* ga_p = grad_a.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, sh.G, 1, [&](int64_t g0, int64_t g1) {
      MEDHPC_CALL_COPY(vib_backward_rows<scalar_t>, gz_p, gkl_p, mu_p, a_p, gmu_p, ga_p, sh, s, o,
                       relu, kl_mean, g0, g1)
    });
  });
  return {grad_mu, grad_a};
}

// The CUDA schedule on the CPU (test-only): forward thread bodies over every Box-Muller pair,
// backward thread bodies over every (row, column); the stream position each z element was
// written from, and each grad_z element was weighted with, comes back in position_fwd and
// position_bwd (-1 where none: a schedule that misses an element shows).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vib_cuda_schedule_cpu(
    const at::Tensor& mu_in, const at::Tensor& a_in, const at::Tensor& grad_z_in,
    const at::Tensor& grad_kl_in, int64_t seed, int64_t offset, bool relu, bool kl_mean,
    int64_t share_rows) {
  check_vib_inputs(mu_in, a_in, seed, offset, share_rows);
  check_vib_backward_inputs(grad_z_in, grad_kl_in, mu_in);
  check_cpu_dtype("_vib_reparam_cuda_schedule", mu_in);
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const at::Tensor grad_z = grad_z_in.contiguous();
  const at::Tensor grad_kl = grad_kl_in.contiguous();
  const VibShape sh = vib_shape(grad_z.size(0), mu.size(0), mu.size(1), share_rows);
  at::Tensor z = at::empty_like(grad_z);
  at::Tensor grad_mu = at::empty_like(mu);
  at::Tensor grad_a = at::empty_like(a);
  at::Tensor pos_fwd = at::full(grad_z.sizes(), -1, grad_z.options().dtype(at::kLong));
  at::Tensor pos_bwd = at::full(grad_z.sizes(), -1, grad_z.options().dtype(at::kLong));
  const auto s = static_cast<uint64_t>(seed);
  const auto o = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vib_cuda_schedule_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> sigma(sh.B * sh.K);
    const scalar_t* a_p = a.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < sh.B * sh.K; ++i) {
      sigma[i] = vib_sigma<acc_t>(static_cast<acc_t>(a_p[i]), relu);
    }
    for (int64_t p = 0; p < vib_pair_count(sh); ++p) {
      vib_forward_pair<scalar_t, acc_t>(p, sh, mu.const_data_ptr<scalar_t>(), sigma.data(),
                                        z.mutable_data_ptr<scalar_t>(), s, o,
                                        pos_fwd.mutable_data_ptr<int64_t>());
    }
    for (int64_t r = 0; r < sh.share; ++r) {
      for (int64_t q = 0; q < vib_backward_columns(sh); ++q) {
        vib_backward_pair<scalar_t, acc_t>(
            r, q, sh, grad_z.const_data_ptr<scalar_t>(), grad_kl.const_data_ptr<scalar_t>(),
            mu.const_data_ptr<scalar_t>(), a_p, grad_mu.mutable_data_ptr<scalar_t>(),
            grad_a.mutable_data_ptr<scalar_t>(), s, o, relu, kl_mean,
            pos_bwd.mutable_data_ptr<int64_t>());
      }
    }
  });
  return {z, grad_mu, grad_a, pos_fwd, pos_bwd};
}

// Test-only: words x0, x1 of Philox blocks first .. first + count - 1, as the vectorised CPU
// kernels draw them (column 0, 1) and as common/philox.h does for the CUDA kernels (2, 3).
at::Tensor vib_philox_words_cpu(int64_t first, int64_t count, int64_t seed, int64_t offset) {
  TORCH_CHECK(first >= 0 && count >= 0 && seed >= 0 && offset >= 0,
              "_vib_philox_words: first, count, seed and offset must be >= 0");
  std::vector<uint32_t> w0(count), w1(count);
  const auto s = static_cast<uint64_t>(seed);
  const auto o = static_cast<uint64_t>(offset);
  const auto f = static_cast<uint64_t>(first);
  MEDHPC_CALL_COPY(vib_philox_words, s, o, f, count, w0.data(), w1.data())
  at::Tensor out = at::empty({count, 4}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = out.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const Philox4 blk = philox_block(s, o, f + static_cast<uint64_t>(i));
    p[4 * i] = w0[i];
    p[4 * i + 1] = w1[i];
    p[4 * i + 2] = blk.x0;
    p[4 * i + 3] = blk.x1;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(medhpc, CPU, m) {
  m.impl("vib_reparam", &vib_reparam_cpu);
  m.impl("_vib_reparam_backward", &vib_reparam_backward_cpu);
  m.impl("_vib_reparam_cuda_schedule", &vib_cuda_schedule_cpu);
}

// No tensor argument to dispatch on: registered for every backend (it computes on the host).
TORCH_LIBRARY_IMPL(medhpc, CompositeExplicitAutograd, m) {
  m.impl("_vib_philox_words", &vib_philox_words_cpu);
}

}  // namespace medhpc
