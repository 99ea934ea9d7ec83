// The kernels compiled for AVX-512 (F, BW, VL, DQ, as ATen's AVX512 build),
// picked at run time by kernels(). See kernels_avx2.cpp for the target switch.
#include "kernels_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// GCC's target pragma switches code generation, not the feature macros that
// sleef.h keys its vector declarations on: state them for this file.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernels_impl.h"
#pragma GCC pop_options

const iwae_fused::cpu::KernelTable* iwae_fused::cpu::kernels_avx512() {
  return &AVX512::table;
}
#else
const iwae_fused::cpu::KernelTable* iwae_fused::cpu::kernels_avx512() {
  return nullptr;
}
#endif
