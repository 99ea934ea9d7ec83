// The Python module iwae_fused._C: loading it registers the ops with the
// dispatcher (the static TORCH_LIBRARY blocks); it also says what it was
// built for, which iwae_fused/_build.py checks against the running torch.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include "cpu/kernel_api.h"
#include "cpu/output_cache.h"
#include "saved_stats.h"

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
  m.def("empty_cache", &iwae_fused::cpu::empty_cache,
        "Returns the CPU output cache's free blocks to the system.");
  m.def(
      "cache_stats",
      [] {
        const auto s = iwae_fused::cpu::output_cache_stats();
        pybind11::dict d;
        d["budget_bytes"] = s.budget_bytes;
        d["cached_bytes"] = s.cached_bytes;
        d["live_bytes"] = s.live_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      },
      "The CPU output cache's budget, free and held bytes, hits and misses.");
  m.def("last_level_cache_bytes", &iwae_fused::cpu::last_level_cache_bytes,
        "The last-level cache, in bytes: a CPU backward whose operands and "
        "gradients exceed half of it writes its gradients with non-temporal "
        "stores (IWAE_FUSED_LLC_BYTES overrides).");
  m.def("_streamed_calls", &iwae_fused::cpu::streamed_calls,
        "CPU weights passes that chose non-temporal stores, since the process started.");
  m.def("_set_cpu_stands_for_gpu", &iwae_fused::set_cpu_stands_for_gpu,
        "While the CUDA emulator runs the ops: autograd saves for CPU tensors "
        "what it saves for GPU tensors.");
  m.def("_cpu_stands_for_gpu", &iwae_fused::cpu_stands_for_gpu);
}
