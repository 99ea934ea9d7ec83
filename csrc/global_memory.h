// Loads and stores of global memory in code that runs on the device, through
// two tiny helpers (as CUB's ThreadLoad/ThreadStore): plain dereferences for
// nvcc and the CPU kernels, checked and counted accesses when the CUDA source
// is compiled for the emulator (cuda/emu/simt.h). Shared by kernels that both
// backends compile (vimco_math.h), so they too run under the emulator's checks.
#pragma once

#if defined(IWAE_CUDA_EMU)
#include "cuda/emu/simt.h"
#else
#if defined(__CUDACC__) || defined(__HIPCC__)
#define IWAE_MEM_HD __host__ __device__ __forceinline__
#else
#define IWAE_MEM_HD inline
#endif

template <typename T>
IWAE_MEM_HD T ld_global(const T* p) {
  return *p;
}
template <typename T, typename V>
IWAE_MEM_HD void st_global(T* p, V v) {
  *p = static_cast<T>(v);
}
template <typename T>
IWAE_MEM_HD T ld_shared(const T* p) {
  return *p;
}
template <typename T, typename V>
IWAE_MEM_HD void st_shared(T* p, V v) {
  *p = static_cast<T>(v);
}
#endif
