// The CUDA backend's kernels as ops_glue.h and vimco_glue.h expect them.
// Launched on the current stream of the current device (device_ops.h sets
// the device); compiled by nvcc, or by the host compiler for the emulator.
#pragma once

#include <ATen/core/Tensor.h>

#include "../kernel_args.h"

namespace iwae_fused::cuda {

struct CudaKernels {
  static void reduce(const ReduceArgs& a);
  // With a.stats null, the weights with their stats recomputed: only where
  // recomputes_stats(a) holds (rows that fit a 16-byte vector).
  static void weights(const WeightsArgs& a);
  static bool recomputes_stats(const WeightsArgs& a);
  static c10::Allocator* output_allocator() { return nullptr; } // CUDA's caching one
};

struct CudaVimco {
  static void vimco_forward(const VimcoArgs& a);
  static void vimco_backward(const VimcoArgs& a);
  static c10::Allocator* output_allocator() { return nullptr; }
};

} // namespace iwae_fused::cuda
