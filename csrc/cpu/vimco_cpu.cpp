// VIMCO on CPU: the op glue of vimco_glue.h over the vectorised kernels
// (vimco_lanes.h, L examples per vector of doubles), in the best instruction
// set this CPU runs, as for iwelbo (iwelbo_cpu.cpp).
#include <torch/library.h>

#include "../vimco_glue.h"
#include "kernel_api.h"

namespace iwae_fused {
namespace {

struct CpuVimco {
  static void vimco_forward(const VimcoArgs& a) { cpu::kernels().vimco_forward(a); }
  static void vimco_backward(const VimcoArgs& a) { cpu::kernels().vimco_backward(a); }
};

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CPU, m) {
  m.impl("vimco", &vimco<CpuVimco>);
  m.impl("_vimco_forward", &vimco_forward<CpuVimco>);
  m.impl("vimco_backward", &vimco_backward<CpuVimco>);
}

} // namespace iwae_fused
