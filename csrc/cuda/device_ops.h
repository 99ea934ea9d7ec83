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
#include <type_traits>

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

// An op as registered: Dev::wrap<F>() where the backend wraps its ops (the
// emulator: a scope that knows the op's storages), F itself otherwise.
template <class Dev, auto F, typename = void>
struct OpImpl {
  static constexpr auto get() { return F; }
};
template <class Dev, auto F>
struct OpImpl<Dev, F, std::void_t<decltype(Dev::template wrap<F>())>> {
  static constexpr auto get() { return Dev::template wrap<F>(); }
};

template <class Dev>
void register_device_ops(torch::Library& m) {
  using D = DeviceOps<Dev>;
  m.impl("iwelbo", OpImpl<Dev, &D::iwelbo>::get());
  m.impl("_iwelbo_forward", OpImpl<Dev, &D::iwelbo_forward>::get());
  m.impl("iwelbo_backward", OpImpl<Dev, &D::iwelbo_backward>::get());
  m.impl("normalized_weights", OpImpl<Dev, &D::normalized_weights>::get());
  m.impl("logsumexp_stats", OpImpl<Dev, &D::logsumexp_stats>::get());
  m.impl("weight_diagnostics", OpImpl<Dev, &D::weight_diagnostics>::get());
  m.impl("dreg", OpImpl<Dev, &D::dreg>::get());
  m.impl("dreg_backward", OpImpl<Dev, &D::dreg_backward>::get());
  m.impl("vimco", OpImpl<Dev, &D::vimco>::get());
  m.impl("_vimco_forward", OpImpl<Dev, &D::vimco_forward>::get());
  m.impl("vimco_backward", OpImpl<Dev, &D::vimco_backward>::get());
}

} // namespace iwae_fused
