// The CUDA backend's kernels as ops_glue.h expects them. Launched on the
// current stream of the current device (iwelbo_cuda.cpp sets the device).
#pragma once

#include "../kernel_args.h"

namespace iwae_fused::cuda {

struct CudaKernels {
  static void reduce(const ReduceArgs& a);
  static void weights(const WeightsArgs& a);
};

} // namespace iwae_fused::cuda
