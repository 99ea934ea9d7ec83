// The device-independent body of the VIMCO ops (see vimco_math.h): plan,
// allocate, launch. A backend supplies `Kernels` with
//   static void vimco_forward(const VimcoArgs&);
//   static void vimco_backward(const VimcoArgs&);
//   static c10::Allocator* output_allocator();  // as in ops_glue.h
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <array>
#include <tuple>

#include "kernel_args.h"
#include "ops_glue.h"
#include "plan.h"
#include "vimco_math.h"

namespace iwae_fused {

inline Plan vimco_plan(const at::Tensor& log_p, const at::Tensor& log_q, int64_t dim) {
  Plan pl = make_plan("vimco", log_p, log_q, dim);
  TORCH_CHECK_VALUE(
      pl.K >= 2, "vimco(): needs at least 2 samples along dim=", dim,
      " (the leave-one-out signal of one sample is undefined), but got K = ",
      pl.K);
  return pl;
}

inline VimcoArgs vimco_args(const Plan& pl) {
  VimcoArgs a;
  a.dtype = pl.dtype;
  a.outer = pl.outer, a.K = pl.K, a.inner = pl.inner;
  a.p = strided(pl.p);
  a.q = strided(pl.q);
  return a;
}

inline c10::SmallVector<int64_t, 7> vimco_state_shape(const Plan& pl) {
  c10::SmallVector<int64_t, 7> s{vimco_math::kStateSize};
  for (int64_t d : pl.out_shape(false)) s.push_back(d);
  return s;
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> vimco_forward(
    const at::Tensor& log_p, const at::Tensor& log_q, int64_t dim, bool keepdim) {
  const Plan pl = vimco_plan(log_p, log_q, dim);
  at::Tensor out = empty_output<Kernels>(pl, pl.out_shape(keepdim), pl.dtype);
  at::Tensor state = empty_output<Kernels>(pl, vimco_state_shape(pl), at::kDouble);
  auto a = vimco_args(pl);
  a.out = out.mutable_data_ptr();
  a.state = state.mutable_data_ptr<double>();
  if (pl.num_outputs() > 0) Kernels::vimco_forward(a);
  return {out, state};
}

template <class Kernels>
at::Tensor vimco(
    const at::Tensor& log_p, const at::Tensor& log_q, int64_t dim, bool keepdim) {
  return std::get<0>(vimco_forward<Kernels>(log_p, log_q, dim, keepdim));
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> vimco_backward(
    const at::Tensor& grad, const at::Tensor& state, const at::Tensor& log_p,
    const at::Tensor& log_q, int64_t dim, bool keepdim,
    std::array<bool, 2> output_mask) {
  const Plan pl = vimco_plan(log_p, log_q, dim);
  common_device("vimco_backward", {{"log_p", &log_p}, {"grad", &grad}, {"state", &state}});
  const auto out_shape = pl.out_shape(keepdim);
  TORCH_CHECK_VALUE(
      grad.sizes() == at::IntArrayRef(out_shape), "vimco_backward(): expected grad of shape ",
      at::IntArrayRef(out_shape), " (the shape of the bound), but got ", grad.sizes());
  const auto st_shape = vimco_state_shape(pl);
  TORCH_CHECK_VALUE(
      state.sizes() == at::IntArrayRef(st_shape) && state.scalar_type() == at::kDouble,
      "vimco_backward(): expected a float64 state of shape ", at::IntArrayRef(st_shape),
      " (from _vimco_forward), but got ", state.sizes(), " and ", state.scalar_type());
  const IncomingGrad g = incoming_grad(pl, grad, keepdim, false);
  const at::Tensor st = state.contiguous();
  auto a = vimco_args(pl);
  a.state = const_cast<double*>(st.const_data_ptr<double>());
  a.g = g.g.const_data_ptr();
  a.g_so = g.so, a.g_si = g.si;
  at::Tensor out_p, out_q;
  if (output_mask[0]) {
    out_p = pl.empty_full(pl.dtype, a.out_so, a.out_sk, a.out_si, Kernels::output_allocator());
    a.out_p = out_p.mutable_data_ptr();
  }
  if (output_mask[1]) {
    out_q = pl.empty_full(pl.dtype, a.out_so, a.out_sk, a.out_si, Kernels::output_allocator());
    a.out_q = out_q.mutable_data_ptr();
  }
  if (pl.num_outputs() > 0) Kernels::vimco_backward(a);
  canonical_output(pl, out_p);
  canonical_output(pl, out_q);
  return {out_p, out_q};
}

} // namespace iwae_fused
