// CUDA registrations: every op's device-independent body over the CUDA
// kernels, under a guard for the inputs' device (the kernels launch on its
// current stream).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "device_ops.h"
#include "kernel_api.h"

namespace iwae_fused {
namespace {

struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;
  using Kernels = cuda::CudaKernels;
  using Vimco = cuda::CudaVimco;
};

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CUDA, m) {
  register_device_ops<CudaDevice>(m);
}

} // namespace iwae_fused
