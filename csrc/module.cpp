// The Python module iwae_fused._C: loading it registers the ops with the
// dispatcher (the static TORCH_LIBRARY blocks); it also says what it was
// built for, which iwae_fused/_build.py checks against the running torch.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include "cpu/kernel_api.h"

#define IWAE_STR2(x) #x
#define IWAE_STR(x) IWAE_STR2(x)

PYBIND11_MODULE(_C, m) {
  m.doc() = "iwae_fused compiled ops (registered under torch.ops.iwae_fused)";
  m.attr("torch_version") = IWAE_STR(TORCH_VERSION_MAJOR) "." IWAE_STR(
      TORCH_VERSION_MINOR) "." IWAE_STR(TORCH_VERSION_PATCH);
#ifdef IWAE_FUSED_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_version") = // torch.version.cuda at build time
      IWAE_STR(IWAE_FUSED_CUDA_MAJOR) "." IWAE_STR(IWAE_FUSED_CUDA_MINOR);
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_version") = pybind11::none();
#endif
  m.def(
      "cpu_kernels",
      [] { return std::string(iwae_fused::cpu::kernels().name); },
      "The instruction set of the CPU kernels in use (DEFAULT, AVX2, AVX512).");
}
