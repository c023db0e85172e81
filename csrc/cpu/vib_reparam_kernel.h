// The vectorised CPU kernels of medhpc::vib_reparam and its backward, compiled three times: by
// vib_reparam_cpu.cpp for any CPU (ATen's DEFAULT Vectorized), by vib_reparam_cpu_avx2.cpp
// for AVX2 + FMA and by vib_reparam_cpu_avx512.cpp for AVX-512 (Sleef log/sincos); the op
// picks one at run time.
// Each includer defines MEDHPC_VEC_NS (the namespace of its copy) first.
//
// The AVX copies are compiled under a target pragma, so anything they share with the other
// files (an inline function or template instantiation the linker keeps one copy of) could carry
// AVX-512 instructions into the DEFAULT path of a CPU without them. Hence this header uses no
// ATen tensors, threads, checks or std containers: raw pointers and a local Buffer only, with
// the thread split and the argument checks in vib_reparam_cpu.cpp (default target).
//
// Schedule: threads take whole noise rows g (the rows of the batch that share one noise row
// come along), so no two threads write one output; per noise row and sample the normals of the
// K contiguous stream positions are drawn in one go, one Philox block, one log and one sqrt per
// Box-Muller pair, lanes innermost so the Philox rounds and the transcendental functions run
// as SIMD. Every element is computed by the same vector instructions wherever a thread's range
// begins (partial vectors are loaded with a count, never finished by a scalar loop), and each
// example's KL is summed over j in order: results are bit-for-bit the same run to run and for
// any thread count. Sleef's functions may differ from std:: and from torch in the last ulp, so
// across devices and against the reference the results agree within rounding, not bitwise.
#pragma once

#ifndef MEDHPC_VEC_NS
#error "define MEDHPC_VEC_NS before including cpu/vib_reparam_kernel.h"
#endif

// ATen's vector headers carry CUDA-style `#pragma unroll` that g++ does not know, and (in the
// AVX2 copy, whose ISA comes from a target pragma) a bfloat16 lambda g++ flags for its vector
// return ABI; neither concerns this file, so those two warnings are silenced for the include.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wpsabi"
#include <ATen/cpu/vec/vec.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#include <sleef.h>
#endif

#include "common/philox.h"
#include "common/vib_math.h"
#include "common/vib_schedule.h"

namespace medhpc {
namespace MEDHPC_VEC_NS {

using at::vec::Vectorized;

// An owning array in this copy's namespace (std::vector's out-of-line members would be shared
// with the other files; see the top of this file).
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n) : p_(new T[n > 0 ? n : 1]) {}
  ~Buffer() { delete[] p_; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() const { return p_; }

 private:
  T* p_;
};

constexpr int64_t kLanes = 64;  // Philox blocks per SIMD batch

// Words x0, x1 of Philox blocks first .. first + count - 1 of the stream (seed, offset): the
// rounds of philox4x32_10 (common/philox.h) on many counters at a time, lanes innermost. The
// arrays w0, w1 hold count rounded up to kLanes.
#if defined(CPU_CAPABILITY_AVX2)
// AVX2: eight blocks per register; _mm256_mul_epu32 multiplies the even 32-bit lanes into
// 64-bit products, so the odd lanes go through it shifted down and the halves are blended back.
inline void philox_words(uint64_t seed, uint64_t offset, uint64_t first, int64_t count,
                         uint32_t* w0, uint32_t* w1) {
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
  const __m256i o0 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  const __m256i o1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  for (int64_t i0 = 0; i0 < count; i0 += 8) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; ++l) {
      const uint64_t block = first + static_cast<uint64_t>(i0 + l);
      lo[l] = static_cast<uint32_t>(block);
      hi[l] = static_cast<uint32_t>(block >> 32);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i c2 = o0, c3 = o1;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      const __m256i pe0 = _mm256_mul_epu32(c0, m0);
      const __m256i po0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
      const __m256i pe1 = _mm256_mul_epu32(c2, m1);
      const __m256i po1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
      const __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + i0), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + i0), c1);
  }
}
#elif defined(CPU_CAPABILITY_AVX512)
// AVX-512: the same as the AVX2 form on sixteen blocks per register.
inline void philox_words(uint64_t seed, uint64_t offset, uint64_t first, int64_t count,
                         uint32_t* w0, uint32_t* w1) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
  const __m512i o0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  const __m512i o1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  constexpr __mmask16 kOdd = 0xAAAA;
  for (int64_t i0 = 0; i0 < count; i0 += 16) {
    alignas(64) uint32_t lo[16], hi[16];
    for (int l = 0; l < 16; ++l) {
      const uint64_t block = first + static_cast<uint64_t>(i0 + l);
      lo[l] = static_cast<uint32_t>(block);
      hi[l] = static_cast<uint32_t>(block >> 32);
    }
    __m512i c0 = _mm512_load_si512(lo);
    __m512i c1 = _mm512_load_si512(hi);
    __m512i c2 = o0, c3 = o1;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      const __m512i pe0 = _mm512_mul_epu32(c0, m0);
      const __m512i po0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
      const __m512i pe1 = _mm512_mul_epu32(c2, m1);
      const __m512i po1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
      const __m512i hi0 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(pe0, 32), po0);
      const __m512i lo0 = _mm512_mask_blend_epi32(kOdd, pe0, _mm512_slli_epi64(po0, 32));
      const __m512i hi1 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(pe1, 32), po1);
      const __m512i lo1 = _mm512_mask_blend_epi32(kOdd, pe1, _mm512_slli_epi64(po1, 32));
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm512_storeu_si512(w0 + i0, c0);
    _mm512_storeu_si512(w1 + i0, c1);
  }
}
#else
inline void philox_words(uint64_t seed, uint64_t offset, uint64_t first, int64_t count,
                         uint32_t* w0, uint32_t* w1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int64_t i0 = 0; i0 < count; i0 += kLanes) {
    uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) {
      const uint64_t block = first + static_cast<uint64_t>(i0 + l);
      c0[l] = static_cast<uint32_t>(block);
      c1[l] = static_cast<uint32_t>(block >> 32);
      c2[l] = static_cast<uint32_t>(offset);
      c3[l] = static_cast<uint32_t>(offset >> 32);
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const uint64_t p0 = static_cast<uint64_t>(kM0) * c0[l];
        const uint64_t p1 = static_cast<uint64_t>(kM1) * c2[l];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
        c0[l] = n0;
        c1[l] = static_cast<uint32_t>(p1);
        c2[l] = n2;
        c3[l] = static_cast<uint32_t>(p0);
      }
      k0 += kW0;
      k1 += kW1;
    }
    const int64_t n = count - i0 < kLanes ? count - i0 : kLanes;
    for (int64_t l = 0; l < n; ++l) {
      w0[i0 + l] = c0[l];
      w1[i0 + l] = c1[l];
    }
  }
}
#endif

// radius * cos(theta) and radius * sin(theta); with AVX2 through Sleef's sincos, which shares
// the argument reduction between the two.
template <typename T>
void polar(const Vectorized<T>& radius, const Vectorized<T>& theta, Vectorized<T>& c,
           Vectorized<T>& s) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const Sleef___m256_2 sc = Sleef_sincosf8_u10(theta);
    c = radius * Vectorized<T>(sc.y);
    s = radius * Vectorized<T>(sc.x);
    return;
  } else {
    const Sleef___m256d_2 sc = Sleef_sincosd4_u10(theta);
    c = radius * Vectorized<T>(sc.y);
    s = radius * Vectorized<T>(sc.x);
    return;
  }
#elif defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const Sleef___m512_2 sc = Sleef_sincosf16_u10(theta);
    c = radius * Vectorized<T>(sc.y);
    s = radius * Vectorized<T>(sc.x);
    return;
  } else {
    const Sleef___m512d_2 sc = Sleef_sincosd8_u10(theta);
    c = radius * Vectorized<T>(sc.y);
    s = radius * Vectorized<T>(sc.x);
    return;
  }
#else
  c = radius * theta.cos();
  s = radius * theta.sin();
#endif
}

// Scratch of one thread for normals_range over at most `positions` positions.
template <typename T>
struct NormalScratch {
  static int64_t padded(int64_t positions) {
    return (positions / 2 + 2 + kLanes - 1) / kLanes * kLanes;
  }
  Buffer<uint32_t> w0, w1;
  Buffer<T> u1, u2, normals;
  explicit NormalScratch(int64_t positions)
      : w0(padded(positions)),
        w1(padded(positions)),
        u1(padded(positions)),
        u2(padded(positions)),
        normals(2 * padded(positions)) {}
};

// u = (word + 0.5) * 2^-32 for n words (arrays padded to kLanes), as box_muller computes it.
template <typename T>
void uniforms(const uint32_t* w, int64_t n, T* u) {
  const T two_pow_m32 = T(2.3283064365386963e-10);
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    // AVX2 converts signed words only: the two 16-bit halves convert exactly, and their sum
    // (hi * 2^16 exact) rounds once, to static_cast<float>(word).
    const __m256 scale = _mm256_set1_ps(two_pow_m32), half = _mm256_set1_ps(0.5f);
    const __m256 two16 = _mm256_set1_ps(65536.0f);
    const __m256i low16 = _mm256_set1_epi32(0xFFFF);
    for (int64_t i = 0; i < n; i += 8) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
      const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 16));
      const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(x, low16));
      const __m256 f = _mm256_add_ps(_mm256_mul_ps(hi, two16), lo);
      _mm256_storeu_ps(u + i, _mm256_mul_ps(_mm256_add_ps(f, half), scale));
    }
    return;
  }
#elif defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m512 scale = _mm512_set1_ps(two_pow_m32), half = _mm512_set1_ps(0.5f);
    for (int64_t i = 0; i < n; i += 16) {
      const __m512 f = _mm512_cvtepu32_ps(_mm512_loadu_si512(w + i));  // rounds as static_cast
      _mm512_storeu_ps(u + i, _mm512_mul_ps(_mm512_add_ps(f, half), scale));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) u[i] = (static_cast<T>(w[i]) + T(0.5)) * two_pow_m32;
}

// Standard normals at stream positions [begin, end), returned as a pointer into the scratch
// (valid until the next call): Box-Muller as box_muller (common/vib_math.h), one block per pair
// (a range that begins or ends mid-pair draws that pair's block for one of its numbers). The
// cosine and sine branches are interleaved in stream order, so no per-element gather is needed.
template <typename T>
const T* normals_range(uint64_t seed, uint64_t offset, int64_t begin, int64_t end,
                       NormalScratch<T>& ws) {
  using Vec = Vectorized<T>;
  if (end <= begin) return ws.normals.data();
  const int64_t first = begin >> 1;
  const int64_t blocks = ((end - 1) >> 1) + 1 - first;
  philox_words(seed, offset, static_cast<uint64_t>(first), blocks, ws.w0.data(), ws.w1.data());
  uniforms<T>(ws.w0.data(), blocks, ws.u1.data());
  uniforms<T>(ws.w1.data(), blocks, ws.u2.data());
  T* out = ws.normals.data();
  for (int64_t i = 0; i < blocks; i += Vec::size()) {
    const int count = static_cast<int>((blocks - i < Vec::size() ? blocks - i : Vec::size()));
    const Vec u1 = Vec::loadu(ws.u1.data() + i, count);
    const Vec u2 = Vec::loadu(ws.u2.data() + i, count);
    const Vec radius = (Vec(T(-2)) * u1.log()).sqrt();
    const Vec theta = Vec(T(6.283185307179586)) * u2;
    Vec c, s;
    polar<T>(radius, theta, c, s);
    const auto both = at::vec::interleave2<T>(c, s);  // c0 s0 c1 s1 ... in stream order
    const int n = 2 * count;
    std::get<0>(both).store(out + 2 * i, n < Vec::size() ? n : Vec::size());
    if (n > Vec::size()) std::get<1>(both).store(out + 2 * i + Vec::size(), n - Vec::size());
  }
  return out + (begin - 2 * first);
}

// vib_sigma and vib_dsigma_da (common/vib_math.h) on a vector: the same branches as blends, so
// a NaN `a` gives a NaN sigma and slope here too (a <= 0 and x > 20 are false for NaN).
template <typename T>
Vectorized<T> sigma_vec(const Vectorized<T>& a, bool relu) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0));
  const Vec r = relu ? Vec::blendv(a, zero, a <= zero) : a;
  const Vec x = r - Vec(T(5));
  return Vec::blendv(x.exp().log1p(), x, x > Vec(T(20)));
}

template <typename T>
Vectorized<T> dsigma_vec(const Vectorized<T>& a, bool relu) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0)), one(T(1));
  const Vec x = a - Vec(T(5));
  const Vec slope = Vec::blendv(one / (one + x.neg().exp()), one, x > Vec(T(20)));
  return relu ? Vec::blendv(slope, zero, a <= zero) : slope;
}

// Forward over noise rows [g0, g1) (and the batch rows they feed).
template <typename T>
void vib_forward_rows(const T* mu, const T* a, T* z, T* kl, const VibShape& sh, uint64_t seed,
                      uint64_t offset, bool relu, bool kl_mean, int64_t g0, int64_t g1) {
  using Vec = Vectorized<T>;
  const int64_t K = sh.K, GK = sh.G * sh.K;
  {
    NormalScratch<T> ws(K + 2);
    Buffer<T> sigma(sh.share * K), term(K);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t rb = vib_group_begin(sh, g), re = vib_group_end(sh, g);
      for (int64_t b = rb; b < re; ++b) {
        T* sg_row = sigma.data() + (b - rb) * K;
        for (int64_t j = 0; j < K; j += Vec::size()) {
          const int count = static_cast<int>((K - j < Vec::size() ? K - j : Vec::size()));
          const Vec m = Vec::loadu(mu + b * K + j, count);
          const Vec sg = sigma_vec<T>(Vec::loadu(a + b * K + j, count), relu);
          sg.store(sg_row + j, count);
          (Vec(T(0.5)) * (m * m + sg * sg - Vec(T(1))) - sg.log()).store(term.data() + j, count);
        }
        T kl_sum = 0;  // in j order, whatever the threads: reproducible
        for (int64_t j = 0; j < K; ++j) kl_sum += term.data()[j];
        kl[b] = kl_mean ? kl_sum / T(K) : kl_sum;
      }
      for (int64_t s = 0; s < sh.S; ++s) {
        const int64_t n0 = s * GK + g * K;
        const T* eps = normals_range<T>(seed, offset, n0, n0 + K, ws);
        for (int64_t b = rb; b < re; ++b) {
          const T* m_row = mu + b * K;
          const T* sg_row = sigma.data() + (b - rb) * K;
          T* z_row = z + (s * sh.B + b) * K;
          for (int64_t j = 0; j < K; j += Vec::size()) {
            const int count = static_cast<int>((K - j < Vec::size() ? K - j : Vec::size()));
            const Vec zv = Vec::loadu(m_row + j, count) +
                           Vec::loadu(sg_row + j, count) * Vec::loadu(eps + j, count);
            zv.store(z_row + j, count);
          }
        }
      }
    }
  }
}

// Backward over noise rows [g0, g1) (and the batch rows they feed).
template <typename T>
void vib_backward_rows(const T* gz, const T* gkl, const T* mu, const T* a, T* gmu, T* ga,
                       const VibShape& sh, uint64_t seed, uint64_t offset, bool relu,
                       bool kl_mean, int64_t g0, int64_t g1) {
  using Vec = Vectorized<T>;
  const int64_t K = sh.K, GK = sh.G * sh.K;
  {
    NormalScratch<T> ws(K + 2);
    Buffer<T> sum_g(sh.share * K), sum_ge(sh.share * K);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t rb = vib_group_begin(sh, g), re = vib_group_end(sh, g);
      for (int64_t i = 0; i < sh.share * K; ++i) {
        sum_g.data()[i] = T(0);
        sum_ge.data()[i] = T(0);
      }
      for (int64_t s = 0; s < sh.S; ++s) {
        const int64_t n0 = s * GK + g * K;
        const T* eps = normals_range<T>(seed, offset, n0, n0 + K, ws);
        for (int64_t b = rb; b < re; ++b) {
          const T* g_row = gz + (s * sh.B + b) * K;
          T* sg = sum_g.data() + (b - rb) * K;
          T* sge = sum_ge.data() + (b - rb) * K;
          for (int64_t j = 0; j < K; j += Vec::size()) {
            const int count = static_cast<int>((K - j < Vec::size() ? K - j : Vec::size()));
            const Vec gv = Vec::loadu(g_row + j, count);
            (Vec::loadu(sg + j, count) + gv).store(sg + j, count);
            (Vec::loadu(sge + j, count) + gv * Vec::loadu(eps + j, count))
                .store(sge + j, count);
          }
        }
      }
      for (int64_t b = rb; b < re; ++b) {
        const Vec c(kl_mean ? gkl[b] / T(K) : gkl[b]);
        const T* sg = sum_g.data() + (b - rb) * K;
        const T* sge = sum_ge.data() + (b - rb) * K;
        for (int64_t j = 0; j < K; j += Vec::size()) {
          const int count = static_cast<int>((K - j < Vec::size() ? K - j : Vec::size()));
          const Vec m = Vec::loadu(mu + b * K + j, count);
          const Vec av = Vec::loadu(a + b * K + j, count);
          const Vec sgm = sigma_vec<T>(av, relu);
          (Vec::loadu(sg + j, count) + c * m).store(gmu + b * K + j, count);
          const Vec g_sigma = Vec::loadu(sge + j, count) + c * (sgm - Vec(T(1)) / sgm);
          (g_sigma * dsigma_vec<T>(av, relu)).store(ga + b * K + j, count);
        }
      }
    }
  }
}

// Entry points of this copy (explicit instantiations, declared in vib_reparam_cpu.cpp, which
// splits the rows over threads): contiguous float or double arrays, outputs preallocated.
template void vib_forward_rows<float>(const float*, const float*, float*, float*, const VibShape&,
                                      uint64_t, uint64_t, bool, bool, int64_t, int64_t);
template void vib_forward_rows<double>(const double*, const double*, double*, double*,
                                       const VibShape&, uint64_t, uint64_t, bool, bool, int64_t,
                                       int64_t);
template void vib_backward_rows<float>(const float*, const float*, const float*, const float*,
                                       float*, float*, const VibShape&, uint64_t, uint64_t, bool,
                                       bool, int64_t, int64_t);
template void vib_backward_rows<double>(const double*, const double*, const double*,
                                        const double*, double*, double*, const VibShape&,
                                        uint64_t, uint64_t, bool, bool, int64_t, int64_t);

// Words x0, x1 of blocks first .. first + count - 1 as this copy's kernels draw them, for the
// test-only op _vib_philox_words.
void vib_philox_words(uint64_t seed, uint64_t offset, uint64_t first, int64_t count,
                      uint32_t* w0, uint32_t* w1) {
  const int64_t padded = (count + kLanes - 1) / kLanes * kLanes;
  Buffer<uint32_t> a(padded), b(padded);
  philox_words(seed, offset, first, count, a.data(), b.data());
  for (int64_t i = 0; i < count; ++i) {
    w0[i] = a.data()[i];
    w1[i] = b.data()[i];
  }
}

}  // namespace MEDHPC_VEC_NS
}  // namespace medhpc
