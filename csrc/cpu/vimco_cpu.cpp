// VIMCO on CPU: the op glue of vimco_glue.h over two kernels. From
// kLanesMinExamples examples on, the vectorised ones (vimco_lanes.h: L
// examples per vector of doubles, in the best instruction set this CPU runs);
// below that most lanes would idle, and one example per thread with
// vimco_math.h's scalar loop is faster (B = 1, K = 1e5: 0.5 ms against 1.6;
// benchmarks/NOTES.md CPU 14). The scalar loop is compiled here, for the
// baseline target, not in the per-instruction-set files.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../vimco_glue.h"
#include "denormals.h"
#include "kernel_api.h"
#include "output_cache.h"

namespace iwae_fused {
namespace {

constexpr int64_t kGrainElems = 32768;
constexpr int64_t kLanesMinExamples = 8; // the lanes of one AVX-512 vector

template <typename Example>
void per_example(const VimcoArgs& a, const Example& example) {
  at::parallel_for(
      0, a.outer * a.inner, std::max<int64_t>(1, kGrainElems / a.K),
      [&](int64_t b, int64_t e) {
        FlushDenormals ftz; // denormals.h
        for (int64_t r = b; r < e; ++r) example(r);
      });
}

struct CpuVimco {
  static void vimco_forward(const VimcoArgs& a) {
    if (a.outer * a.inner >= kLanesMinExamples) return cpu::kernels().vimco_forward(a);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cpu", [&] {
      per_example(a, [&](int64_t r) { vimco_math::forward_example<scalar_t>(a, r); });
    });
  }

  static void vimco_backward(const VimcoArgs& a) {
    if (a.outer * a.inner >= kLanesMinExamples) return cpu::kernels().vimco_backward(a);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cpu_bwd", [&] {
      per_example(a, [&](int64_t r) { vimco_math::backward_example<scalar_t>(a, r); });
    });
  }

  static c10::Allocator* output_allocator() { return cpu::output_allocator(); }
};

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CPU, m) {
  m.impl("vimco", &vimco<CpuVimco>);
  m.impl("_vimco_forward", &vimco_forward<CpuVimco>);
  m.impl("vimco_backward", &vimco_backward<CpuVimco>);
}

} // namespace iwae_fused
