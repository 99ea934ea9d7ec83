// The ops of a GPU backend: the device-independent bodies of ops_glue.h and
// vimco_glue.h, each run under the backend's device guard. The devices of all
// tensor arguments are checked before the guard is made, so mixing devices
// gives the op's "same device" error naming the argument, never the guard's
// own complaint or a kernel reading host memory.
//
// Dev supplies Guard (constructed from the common device), Kernels and
// Vimco: the CUDA registration (iwelbo_cuda.cpp) and the emulator's
// (emu/ops_emu.cpp) instantiate the same template.
#pragma once

#include <torch/library.h>

#include <string>

#include "../ops_glue.h"
#include "../vimco_glue.h"

namespace iwae_fused {

template <class Dev>
struct DeviceOps {
  using K = typename Dev::Kernels;
  using V = typename Dev::Vimco;
  using Guard = typename Dev::Guard;
  using OptTensor = std::optional<at::Tensor>;
  using Pair = std::tuple<at::Tensor, at::Tensor>;

  static at::Tensor iwelbo(const at::Tensor& p, const OptTensor& q, int64_t dim, bool keepdim,
                           double alpha) {
    const Guard g(common_device("iwelbo", {{"log_p", &p}, {"log_q", opt(q)}}));
    return iwae_fused::iwelbo<K>(p, q, dim, keepdim, alpha);
  }
  static Pair iwelbo_forward(const at::Tensor& p, const OptTensor& q, int64_t dim, bool keepdim,
                             double alpha) {
    const Guard g(common_device("iwelbo", {{"log_p", &p}, {"log_q", opt(q)}}));
    return iwae_fused::iwelbo_forward<K>(p, q, dim, keepdim, alpha);
  }
  static Pair iwelbo_backward(const at::Tensor& grad, const at::Tensor& stats, const at::Tensor& p,
                              const OptTensor& q, int64_t dim, bool keepdim, double alpha,
                              std::array<bool, 2> mask) {
    const Guard g(common_device("iwelbo_backward", {{"log_p", &p}, {"log_q", opt(q)},
                                                    {"grad", &grad}, {"stats", &stats}}));
    return iwae_fused::iwelbo_backward<K>(grad, stats, p, q, dim, keepdim, alpha, mask);
  }
  static at::Tensor normalized_weights(const at::Tensor& p, const OptTensor& q, int64_t dim) {
    const Guard g(common_device("normalized_weights", {{"log_p", &p}, {"log_q", opt(q)}}));
    return iwae_fused::normalized_weights<K>(p, q, dim);
  }
  static at::Tensor logsumexp_stats(const at::Tensor& p, const OptTensor& q, int64_t dim) {
    const Guard g(common_device("iwelbo_state", {{"log_p", &p}, {"log_q", opt(q)}}));
    return iwae_fused::logsumexp_stats<K>(p, q, dim);
  }
  static Pair weight_diagnostics(const at::Tensor& p, const OptTensor& q, int64_t dim) {
    const Guard g(common_device("effective_sample_size", {{"log_p", &p}, {"log_q", opt(q)}}));
    return iwae_fused::weight_diagnostics<K>(p, q, dim);
  }
  static at::Tensor dreg(const at::Tensor& p, const at::Tensor& q, const at::Tensor& z, int64_t dim,
                         std::string z_weight) {
    const Guard g(common_device("dreg", {{"log_p", &p}, {"log_q", &q}, {"z", &z}}));
    return iwae_fused::dreg_value<K>(p, q, z, dim, std::move(z_weight));
  }
  static Pair dreg_backward(const at::Tensor& grad, const at::Tensor& stats, const at::Tensor& p,
                            const at::Tensor& q, int64_t dim, std::string z_weight) {
    const Guard g(common_device("dreg_backward", {{"log_p", &p}, {"log_q", &q},
                                                  {"grad", &grad}, {"stats", &stats}}));
    return iwae_fused::dreg_backward<K>(grad, stats, p, q, dim, std::move(z_weight));
  }
  static at::Tensor vimco(const at::Tensor& p, const at::Tensor& q, int64_t dim, bool keepdim) {
    const Guard g(common_device("vimco", {{"log_p", &p}, {"log_q", &q}}));
    return iwae_fused::vimco<V>(p, q, dim, keepdim);
  }
  static Pair vimco_forward(const at::Tensor& p, const at::Tensor& q, int64_t dim, bool keepdim) {
    const Guard g(common_device("vimco", {{"log_p", &p}, {"log_q", &q}}));
    return iwae_fused::vimco_forward<V>(p, q, dim, keepdim);
  }
  static Pair vimco_backward(const at::Tensor& grad, const at::Tensor& state, const at::Tensor& p,
                             const at::Tensor& q, int64_t dim, bool keepdim,
                             std::array<bool, 2> mask) {
    const Guard g(common_device("vimco_backward", {{"log_p", &p}, {"log_q", &q},
                                                   {"grad", &grad}, {"state", &state}}));
    return iwae_fused::vimco_backward<V>(grad, state, p, q, dim, keepdim, mask);
  }

 private:
  static const at::Tensor* opt(const OptTensor& t) {
    return t.has_value() ? &*t : nullptr;
  }
};

template <class Dev>
void register_device_ops(torch::Library& m) {
  using D = DeviceOps<Dev>;
  m.impl("iwelbo", &D::iwelbo);
  m.impl("_iwelbo_forward", &D::iwelbo_forward);
  m.impl("iwelbo_backward", &D::iwelbo_backward);
  m.impl("normalized_weights", &D::normalized_weights);
  m.impl("logsumexp_stats", &D::logsumexp_stats);
  m.impl("weight_diagnostics", &D::weight_diagnostics);
  m.impl("dreg", &D::dreg);
  m.impl("dreg_backward", &D::dreg_backward);
  m.impl("vimco", &D::vimco);
  m.impl("_vimco_forward", &D::vimco_forward);
  m.impl("vimco_backward", &D::vimco_backward);
}

} // namespace iwae_fused
