// VIMCO on CUDA: a thread per example loops over its K samples (VIMCO's K
// is small: 2-100 discrete samples), the math from ../vimco_math.h, shared
// with the CPU kernels; registered here under the CUDA key.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../vimco_glue.h"

namespace iwae_fused {
namespace {

constexpr int kThreads = 128;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) vimco_forward_kernel(VimcoArgs a) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < a.outer * a.inner;
       r += (int64_t)gridDim.x * blockDim.x) {
    vimco_math::forward_example<scalar_t>(a, r);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) vimco_backward_kernel(VimcoArgs a) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < a.outer * a.inner;
       r += (int64_t)gridDim.x * blockDim.x) {
    vimco_math::backward_example<scalar_t>(a, r);
  }
}

int64_t blocks_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, sms * 16));
}

struct CudaVimco {
  static void vimco_forward(const VimcoArgs& a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cuda", [&] {
      vimco_forward_kernel<scalar_t>
          <<<blocks_for(a.outer * a.inner), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  static void vimco_backward(const VimcoArgs& a) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "vimco_cuda_bwd", [&] {
      vimco_backward_kernel<scalar_t>
          <<<blocks_for(a.outer * a.inner), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

using OptTensor = std::optional<at::Tensor>;

at::Tensor vimco_cuda(const at::Tensor& p, const at::Tensor& q, int64_t dim, bool keepdim) {
  const c10::cuda::CUDAGuard guard(p.device());
  return vimco<CudaVimco>(p, q, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor> vimco_forward_cuda(
    const at::Tensor& p, const at::Tensor& q, int64_t dim, bool keepdim) {
  const c10::cuda::CUDAGuard guard(p.device());
  return vimco_forward<CudaVimco>(p, q, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor> vimco_backward_cuda(
    const at::Tensor& grad, const at::Tensor& state, const at::Tensor& p,
    const at::Tensor& q, int64_t dim, bool keepdim, std::array<bool, 2> mask) {
  const c10::cuda::CUDAGuard guard(p.device());
  return vimco_backward<CudaVimco>(grad, state, p, q, dim, keepdim, mask);
}

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CUDA, m) {
  m.impl("vimco", &vimco_cuda);
  m.impl("_vimco_forward", &vimco_forward_cuda);
  m.impl("vimco_backward", &vimco_backward_cuda);
}

} // namespace iwae_fused
