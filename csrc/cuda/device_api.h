// What the CUDA host code asks of the device, in one small interface: the
// launch (the only place a kernel is started), device limits, and workspace
// memory. Under nvcc these are the CUDA runtime's; compiled by the host
// compiler with IWAE_CUDA_EMU, the emulator (emu/runtime.cpp) answers them
// and runs the kernels on the CPU. The kernels and the launch logic around
// them are the same source either way.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "../global_memory.h"

namespace iwae_fused::cuda::dev {

// The limits the launch logic sizes its grids by: every grid dimension is
// capped by these (never by a literal), and a kernel loops over what does
// not fit, so a small emulated device reaches every loop's later passes.
struct Limits {
  int sm_count;
  int64_t max_grid_x, max_grid_y, max_grid_z;
};
Limits limits();

// A scratch tensor of n elements on the current device (alive while the
// returned tensor is).
at::Tensor workspace(int64_t n, at::ScalarType dtype);

// How many blocks of Kernel, `threads` threads each, one SM holds at once
// (by its registers, shared memory and threads): the launch logic sizes
// grids in whole waves of resident blocks (declared per backend below).
// template <auto Kernel> int resident_blocks(int threads);

}  // namespace iwae_fused::cuda::dev

#if defined(IWAE_CUDA_EMU)
#include "emu/launch.h"
#elif defined(IWAE_CUDA_DEVICE_ONLY)
// nvcc -cubin for the compiler's report alone (benchmarks/gpu_resources.py):
// the kernels and the launch logic that instantiates them, without ATen's
// CUDA runtime headers (the CPU wheel of torch ships them, but not the
// cuBLAS/cuSPARSE headers they include). Never linked or run.
namespace iwae_fused::cuda::dev {

#define IWAE_SHARED(T, name, count) __shared__ T name[count]

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, const Args&... args) {
  Kernel<<<grid, block>>>(args...);
}

template <auto Kernel>
int resident_blocks(int) {
  return 1;
}

}  // namespace iwae_fused::cuda::dev
#else
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

namespace iwae_fused::cuda::dev {

// Kernels use per-block shared memory through this macro, so the emulator can
// check it (emu/simt.h).
#define IWAE_SHARED(T, name, count) __shared__ T name[count]

inline Limits limits() {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  return {prop->multiProcessorCount, prop->maxGridSize[0], prop->maxGridSize[1],
          prop->maxGridSize[2]};
}

inline at::Tensor workspace(int64_t n, at::ScalarType dtype) {
  return at::empty(
      {n}, at::TensorOptions().dtype(dtype).device(at::kCUDA, c10::cuda::current_device()));
}

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, const Args&... args) {
  Kernel<<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <auto Kernel>
int resident_blocks(int threads) {
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, threads, 0));
  return n > 0 ? n : 1;
}

}  // namespace iwae_fused::cuda::dev
#endif
