// The AVX-512 copy of the vectorised VIB kernels (cpu/vib_reparam_kernel.h): ATen's
// Vectorized in its AVX-512 form (16 floats or 8 doubles per instruction), set up as in
// vib_reparam_cpu_avx2.cpp (target pragma and the ISA macros sleef.h and ATen read, by hand).
// vib_reparam_cpu.cpp calls this copy only where the CPU has AVX-512 F, BW, DQ and VL.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx,avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")
// g++ 12 flags the deliberately undefined registers of avx512fintrin.h's _mm512_undefined_*
// once inlined (GCC bug 105593): a false positive, silenced for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define MEDHPC_VEC_NS vec_avx512
#include "cpu/vib_reparam_kernel.h"
#endif
