// VIMCO on CUDA: a thread per example loops over its K samples (VIMCO's K
// is small: 2-100 discrete samples), the math from ../vimco_math.h, shared
// with the CPU kernels. Registered with the other CUDA ops (device_ops.h).
#include <ATen/Dispatch.h>

#include <algorithm>

#include "../vimco_math.h"
#include "device_api.h"
#include "kernel_api.h"

namespace iwae_fused::cuda {
namespace {

constexpr int kVimcoThreads = 128;

template <typename scalar_t>
__global__ void __launch_bounds__(kVimcoThreads) vimco_forward_kernel(VimcoArgs a) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < a.outer * a.inner;
       r += (int64_t)gridDim.x * blockDim.x) {
    vimco_math::forward_example<scalar_t>(a, r);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kVimcoThreads) vimco_backward_kernel(VimcoArgs a) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < a.outer * a.inner;
       r += (int64_t)gridDim.x * blockDim.x) {
    vimco_math::backward_example<scalar_t>(a, r);
  }
}

dim3 vimco_blocks(int64_t n) {
  const int64_t sms = dev::limits().sm_count;
  return dim3(std::max<int64_t>(
      1, std::min<int64_t>((n + kVimcoThreads - 1) / kVimcoThreads, sms * 16)));
}

} // namespace

void CudaVimco::vimco_forward(const VimcoArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cuda", [&] {
    dev::launch<vimco_forward_kernel<scalar_t>>(
        vimco_blocks(a.outer * a.inner), dim3(kVimcoThreads), a);
  });
}

void CudaVimco::vimco_backward(const VimcoArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cuda_bwd", [&] {
    dev::launch<vimco_backward_kernel<scalar_t>>(
        vimco_blocks(a.outer * a.inner), dim3(kVimcoThreads), a);
  });
}

} // namespace iwae_fused::cuda
