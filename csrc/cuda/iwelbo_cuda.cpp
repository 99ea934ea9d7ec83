// CUDA registrations: the op glue of ops_glue.h over the CUDA kernels, each
// under a guard for the inputs' device (the kernels launch on its current
// stream).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops_glue.h"
#include "kernel_api.h"

namespace iwae_fused {
namespace {

using cuda::CudaKernels;
using OptTensor = std::optional<at::Tensor>;

at::Tensor iwelbo_cuda(
    const at::Tensor& log_p, const OptTensor& log_q, int64_t dim, bool keepdim,
    double alpha) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return iwelbo<CudaKernels>(log_p, log_q, dim, keepdim, alpha);
}

std::tuple<at::Tensor, at::Tensor> iwelbo_forward_cuda(
    const at::Tensor& log_p, const OptTensor& log_q, int64_t dim, bool keepdim,
    double alpha) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return iwelbo_forward<CudaKernels>(log_p, log_q, dim, keepdim, alpha);
}

std::tuple<at::Tensor, at::Tensor> iwelbo_backward_cuda(
    const at::Tensor& grad, const at::Tensor& stats, const at::Tensor& log_p,
    const OptTensor& log_q, int64_t dim, bool keepdim, double alpha,
    std::array<bool, 2> output_mask) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return iwelbo_backward<CudaKernels>(
      grad, stats, log_p, log_q, dim, keepdim, alpha, output_mask);
}

at::Tensor normalized_weights_cuda(
    const at::Tensor& log_p, const OptTensor& log_q, int64_t dim) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return normalized_weights<CudaKernels>(log_p, log_q, dim);
}

at::Tensor logsumexp_stats_cuda(
    const at::Tensor& log_p, const OptTensor& log_q, int64_t dim) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return logsumexp_stats<CudaKernels>(log_p, log_q, dim);
}

std::tuple<at::Tensor, at::Tensor> weight_diagnostics_cuda(
    const at::Tensor& log_p, const OptTensor& log_q, int64_t dim) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return weight_diagnostics<CudaKernels>(log_p, log_q, dim);
}

at::Tensor dreg_cuda(
    const at::Tensor& log_p, const at::Tensor& log_q, const at::Tensor& z,
    int64_t dim, std::string z_weight) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return dreg_value<CudaKernels>(log_p, log_q, z, dim, std::move(z_weight));
}

std::tuple<at::Tensor, at::Tensor> dreg_backward_cuda(
    const at::Tensor& grad, const at::Tensor& stats, const at::Tensor& log_p,
    const at::Tensor& log_q, int64_t dim, std::string z_weight) {
  const c10::cuda::CUDAGuard guard(log_p.device());
  return dreg_backward<CudaKernels>(grad, stats, log_p, log_q, dim, std::move(z_weight));
}

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, CUDA, m) {
  m.impl("iwelbo", &iwelbo_cuda);
  m.impl("_iwelbo_forward", &iwelbo_forward_cuda);
  m.impl("iwelbo_backward", &iwelbo_backward_cuda);
  m.impl("normalized_weights", &normalized_weights_cuda);
  m.impl("logsumexp_stats", &logsumexp_stats_cuda);
  m.impl("weight_diagnostics", &weight_diagnostics_cuda);
  m.impl("dreg", &dreg_cuda);
  m.impl("dreg_backward", &dreg_backward_cuda);
}

} // namespace iwae_fused
