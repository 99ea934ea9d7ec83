// The CUDA backend's kernels as ops_glue.h expects them. Launched on the
// current stream of the current device (iwelbo_cuda.cpp sets the device).
#pragma once

#include <ATen/core/Tensor.h>

#include "../kernel_args.h"

namespace iwae_fused::cuda {

struct CudaKernels {
  static void reduce(const ReduceArgs& a);
  static void weights(const WeightsArgs& a);
  static void prepare_output(const at::Tensor&) {} // the caching allocator's
};

} // namespace iwae_fused::cuda
