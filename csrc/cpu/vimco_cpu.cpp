// VIMCO on CPU: one loop over K per example (any strides), examples in
// parallel. The per-example math is vimco_math.h, shared with CUDA; K is
// small for the discrete-latent models VIMCO serves, so these loops are
// scalar and do their arithmetic in double.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../vimco_glue.h"
#include "denormals.h"

namespace iwae_fused {
namespace {

constexpr int64_t kGrainElems = 32768;

struct CpuVimco {
  static void vimco_forward(const VimcoArgs& a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cpu", [&] {
      at::parallel_for(0, a.outer * a.inner, std::max<int64_t>(1, kGrainElems / a.K),
                       [&](int64_t b, int64_t e) {
                         FlushDenormals ftz; // denormals.h
                         for (int64_t r = b; r < e; ++r) vimco_math::forward_example<scalar_t>(a, r);
                       });
    });
  }

  static void vimco_backward(const VimcoArgs& a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cpu_bwd", [&] {
      at::parallel_for(0, a.outer * a.inner, std::max<int64_t>(1, kGrainElems / a.K),
                       [&](int64_t b, int64_t e) {
                         FlushDenormals ftz;
                         for (int64_t r = b; r < e; ++r) vimco_math::backward_example<scalar_t>(a, r);
                       });
    });
  }
};

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CPU, m) {
  m.impl("vimco", &vimco<CpuVimco>);
  m.impl("_vimco_forward", &vimco_forward<CpuVimco>);
  m.impl("vimco_backward", &vimco_backward<CpuVimco>);
}

} // namespace iwae_fused
