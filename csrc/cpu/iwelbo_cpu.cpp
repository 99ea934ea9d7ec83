// CPU registrations: the op glue of ops_glue.h over the vectorised kernels,
// in the best instruction set this CPU runs (kernels_default.cpp picks it).
#include <torch/library.h>

#include "../ops_glue.h"
#include "output_cache.h"
#include "kernel_api.h"

namespace iwae_fused {
namespace {

struct CpuKernels {
  static void reduce(const ReduceArgs& a) { cpu::kernels().reduce(a); }
  static void weights(const WeightsArgs& a) { cpu::kernels().weights(a); }
  // Dense rows of 2, 4 or 8 (AVX-512): normalized_weights in one pass, and
  // a backward given no stats. The CPU training step still saves them
  // (saved_stats.h says why); elsewhere the glue computes missing stats.
  static bool recomputes_stats(const WeightsArgs& a) {
    return cpu::kernels().recomputes_stats(a);
  }
  static c10::Allocator* output_allocator() { return cpu::output_allocator(); }
};

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CPU, m) {
  m.impl("iwelbo", &iwelbo<CpuKernels>);
  m.impl("_iwelbo_forward", &iwelbo_forward<CpuKernels>);
  m.impl("iwelbo_backward", &iwelbo_backward<CpuKernels>);
  m.impl("normalized_weights", &normalized_weights<CpuKernels>);
  m.impl("logsumexp_stats", &logsumexp_stats<CpuKernels>);
  m.impl("weight_diagnostics", &weight_diagnostics<CpuKernels>);
  m.impl("dreg", &dreg_value<CpuKernels>);
  m.impl("dreg_backward", &dreg_backward<CpuKernels>);
}

} // namespace iwae_fused
