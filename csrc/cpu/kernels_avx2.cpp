// The kernels compiled for AVX2 + FMA (picked at run time by kernels()).
// The target is switched for this file's kernels only, after the baseline
// headers, so the rest of the extension still runs on any x86-64 CPU.
#include "kernels_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
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
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels_impl.h"
#pragma GCC pop_options

const iwae_fused::cpu::KernelTable* iwae_fused::cpu::kernels_avx2() {
  return &AVX2::table;
}
#else
const iwae_fused::cpu::KernelTable* iwae_fused::cpu::kernels_avx2() {
  return nullptr;
}
#endif
