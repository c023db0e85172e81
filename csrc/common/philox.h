// Counter-based Philox4x32-10 (Salmon et al. 2011), shared by host and device code.
//
// Every random number in medhpc's kernels is a pure function of (seed, offset, index): a
// backward pass regenerates the forward's noise instead of storing it, and the Philox words are
// bit-identical on the CPU, on CUDA and in medhpc/ops/reference.py (integer maths only), and so
// are the SPSA directions and probes built from them. Numbers derived through floating-point
// functions (the VIB normals, z and KL) are bit-identical run to run on one device and across
// CPU thread counts, but agree across devices and with the reference only within rounding:
// CUDA's logf/sinf/cosf, nvcc's FMA contraction, the CPU's Sleef and the KL summation orders
// differ in the last bits (tests/ops/test_vib_reparam.py states the tolerances).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MEDHPC_HD __host__ __device__ __forceinline__
#else
#define MEDHPC_HD inline
#endif

namespace medhpc {

struct Philox4 {
  uint32_t x0, x1, x2, x3;
};

MEDHPC_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

// Ten rounds of Philox4x32 on counter (c0..c3) with key (k0, k1): Random123's philox4x32_10.
MEDHPC_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kM0, c0, hi0, lo0);
    mulhilo32(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{c0, c1, c2, c3};
}

// The Philox block for stream position `index` of the stream (seed, offset):
// counter = (index lo, index hi, offset lo, offset hi), key = (seed lo, seed hi).
MEDHPC_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t index) {
  return philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

}  // namespace medhpc
