// The AVX2 + FMA copy of the vectorised VIB kernels (cpu/vib_reparam_kernel.h): ATen's
// Vectorized in its AVX2 form (Sleef log/sin/cos, 8 floats or 4 doubles per instruction).
// The target pragma and CPU_CAPABILITY macros are set before any include, as ATen's own
// per-capability kernel files get them from the compiler flags (-mavx2 -mfma, which setuptools
// cannot give one file of an extension). The pragma does not define the ISA macros that
// sleef.h reads to declare its AVX2 functions, so they are defined here by hand.
// vib_reparam_cpu.cpp calls this copy only where the CPU has AVX2 and FMA.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx,avx2,fma")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define MEDHPC_VEC_NS vec_avx2
#include "cpu/vib_reparam_kernel.h"
#endif
