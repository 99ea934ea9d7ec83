// The baseline kernels (at::vec's portable vectors, any CPU), and the run-time
// choice among the instruction sets this extension was compiled for.
#include "kernels_prelude.h"

#include <ATen/Version.h>

#define CPU_CAPABILITY DEFAULT
#include "kernels_impl.h"

namespace iwae_fused::cpu {

const KernelTable* kernels_default() {
  return &DEFAULT::table;
}

const KernelTable& kernels() {
  // ATen has already decided what this CPU runs (cpuinfo, capped by the
  // ATEN_CPU_CAPABILITY variable); follow it so both agree.
  static const KernelTable* chosen = [] {
    const std::string cap = at::get_cpu_capability();
    const KernelTable* t = nullptr;
    if (cap == "AVX512") t = kernels_avx512();
    if (!t && (cap == "AVX512" || cap == "AVX2")) t = kernels_avx2();
    return t ? t : kernels_default();
  }();
  return *chosen;
}

} // namespace iwae_fused::cpu
