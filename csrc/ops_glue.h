// The device-independent body of every op: plan, allocate, fill the kernel
// arguments, launch. A backend supplies `Kernels` with
//   static void reduce(const ReduceArgs&);
//   static void weights(const WeightsArgs&);
//   static bool recomputes_stats(const WeightsArgs&); // whether weights()
//                        // takes these arguments with null stats
//   static c10::Allocator* output_allocator();  // for outputs the kernels
//                        // overwrite completely; null: the device's default
// and registers these functions under its dispatch key (cpu/iwelbo_cpu.cpp).
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/expm1.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log1p.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "kernel_args.h"
#include "log_mean_exp.h"
#include "plan.h"

namespace iwae_fused {

inline Strided strided(const Operand& op) {
  return Strided{op.tensor.const_data_ptr(), op.so, op.sk, op.si};
}

template <typename Args>
Args geometry_args(const Plan& pl) {
  Args a;
  a.dtype = pl.dtype;
  a.outer = pl.outer;
  a.K = pl.K;
  a.inner = pl.inner;
  a.vec_k = pl.vec_k;
  a.p = strided(pl.p);
  if (pl.has_q) a.q = strided(pl.q);
  return a;
}

inline c10::SmallVector<int64_t, 7> stats_shape(const Plan& pl) {
  c10::SmallVector<int64_t, 7> s{2};
  for (int64_t d : pl.out_shape(false)) s.push_back(d);
  return s;
}

inline at::TensorOptions opts(const Plan& pl, at::ScalarType dt) {
  return at::TensorOptions().dtype(dt).device(pl.p.tensor.device());
}

// A contiguous tensor that a kernel is about to overwrite completely, from
// the backend's output allocator where it has one (the CPU output cache,
// cpu/output_cache.h: a training step's outputs, stats and gradients then
// reuse the previous step's pages instead of faulting in fresh ones).
template <class Kernels>
at::Tensor empty_output(const Plan& pl, at::IntArrayRef shape, at::ScalarType dt) {
  if (c10::Allocator* alloc = Kernels::output_allocator()) {
    return at::detail::empty_generic(
        shape, alloc, c10::DispatchKeySet(c10::DispatchKey::CPU), dt, std::nullopt);
  }
  return at::empty(shape, opts(pl, dt));
}

// The incoming gradient of the bound, read in place when its strides walk
// the outputs (a contiguous one, or the expanded scalar of .sum()/.mean():
// no copy and, on CUDA, no extra launch); copied otherwise. The vectorised
// column kernels need unit or zero stride along the outputs (need_unit).
struct IncomingGrad {
  at::Tensor g;
  int64_t so = 0, si = 0;
};

inline IncomingGrad incoming_grad(
    const Plan& pl, const at::Tensor& grad, bool keepdim, bool need_unit) {
  IncomingGrad r{grad.to(pl.dtype)};
  if (pl.num_outputs() > 0 &&
      !(pl.output_strides(r.g, keepdim, r.so, r.si) && (!need_unit || r.si <= 1))) {
    r.g = r.g.contiguous();
    pl.output_strides(r.g, keepdim, r.so, r.si);
  }
  return r;
}

// Full-size outputs come back contiguous (a copy only for transposed or
// permuted geometries), and a masked-off one as an empty tensor, so that the
// fake implementations' metadata is simple and exact.
inline void canonical_output(const Plan& pl, at::Tensor& t) {
  if (!t.defined()) {
    t = at::empty({0}, opts(pl, pl.dtype));
  } else if (!t.is_contiguous()) {
    t = t.contiguous();
  }
}

// beta = 1 - alpha of the Renyi bound, checked.
inline double renyi_beta(const char* op, double alpha) {
  TORCH_CHECK_VALUE(
      std::isfinite(alpha), op, "(): expected a finite alpha, but got ", alpha);
  return 1.0 - alpha;
}

// alpha = 1 (beta = 0) is the ELBO, mean(log w), taken exactly rather than as
// the limit of the Renyi formula: a plain mean, whose gradient is the
// uniform weight 1/K. The difference and the sum are taken in opmath (float
// for half types), so the result is rounded once, as the kernels' are.
inline at::Tensor elbo(const Plan& pl, const at::Tensor& log_p,
                       const std::optional<at::Tensor>& log_q, bool keepdim) {
  const at::ScalarType om = opmath_dtype(pl.dtype);
  const at::Tensor log_w =
      pl.has_q ? at::sub(log_p.to(om), log_q->to(om)) : log_p.to(om);
  const at::Tensor mean =
      log_w.dim() == 0 ? log_w.clone() : at::mean(log_w, pl.dim, keepdim);
  return mean.to(pl.dtype);
}

// The Renyi bound for |beta| < kRenyiDirectMinBeta (log_mean_exp.h says why
// and how): y = beta log w, m its max (NaN ignored, as in the kernels), and
// log v = log((1/K) sum exp(y - shift)) in the form the slice's spread calls
// for. Composite ATen ops in opmath (several passes: this regime is rare and
// accuracy is its point); the stats are the kernels' (shift, log_norm), with
// log_norm = log(sum exp(y - shift)), a sum of positive terms accurate to its
// rounding, for the same backward. y is rounded as the kernels round it (the
// difference in opmath, then the product by beta, both rounded: no
// contraction anywhere, setup.py), so the backward's weights are the softmax
// of exactly these y.
inline std::tuple<at::Tensor, at::Tensor> renyi_near_elbo(
    const Plan& pl, const at::Tensor& log_p, const std::optional<at::Tensor>& log_q,
    bool keepdim, double beta, bool want_out, bool want_stats) {
  const at::ScalarType om = opmath_dtype(pl.dtype);
  at::Tensor y = pl.has_q ? at::sub(log_p.to(om), log_q->to(om)) : log_p.to(om);
  y = at::mul(y.expand(pl.shape), beta);
  if (y.dim() == 0) y = y.unsqueeze(0);
  const int64_t d = pl.shape.empty() ? 0 : pl.dim;
  const at::Tensor m = at::amax(y.masked_fill(at::isnan(y), -INFINITY), d, true);
  const at::Tensor shift = at::where(at::isinf(m), at::zeros_like(m), m);
  const LogMeanExp lme = log_mean_exp(at::sub(y, shift), d, pl.K);
  at::Tensor out, stats;
  if (want_out) {
    out = at::div(at::add(shift, lme.log_mean), beta);
    out = keepdim || pl.shape.empty() ? out : out.squeeze(d);
    if (pl.shape.empty()) out = out.reshape({});
    out = out.to(pl.dtype);
  }
  if (want_stats) {
    const at::Tensor& s = lme.sum;
    const at::Tensor log_norm = at::where(at::eq(s, 0), at::full_like(s, INFINITY), at::log(s));
    stats = at::stack({shift.squeeze(d), log_norm.squeeze(d)}).reshape(stats_shape(pl)).contiguous();
  }
  return {out, stats};
}

// The bound and, if asked, the per-example stats in opmath: [2, *reduced],
// the shift and the log-sum (kernel_args.h), which the backward needs.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> reduce_op(
    const char* op, const at::Tensor& log_p,
    const std::optional<at::Tensor>& log_q, int64_t dim, bool keepdim,
    bool want_out, bool want_stats, bool plain_log_sum = false,
    double beta = 1.0) {
  Plan pl = make_plan(op, log_p, log_q, dim);
  if (beta == 0.0) { // the ELBO; its backward needs no stats
    return {want_out ? elbo(pl, log_p, log_q, keepdim) : at::Tensor(),
            want_stats ? at::zeros(stats_shape(pl), opts(pl, opmath_dtype(pl.dtype)))
                       : at::Tensor()};
  }
  if (std::abs(beta) < kRenyiDirectMinBeta) {
    return renyi_near_elbo(pl, log_p, log_q, keepdim, beta, want_out, want_stats);
  }
  at::Tensor out, stats;
  auto a = geometry_args<ReduceArgs>(pl);
  a.plain_log_sum = plain_log_sum;
  a.beta = beta;
  if (want_out) {
    out = empty_output<Kernels>(pl, pl.out_shape(keepdim), pl.dtype);
    a.out = out.mutable_data_ptr();
  }
  if (want_stats) {
    stats = empty_output<Kernels>(pl, stats_shape(pl), opmath_dtype(pl.dtype));
    a.stats = stats.mutable_data_ptr();
  }
  Kernels::reduce(a);
  return {out, stats};
}

// Runs the element-wise weights kernel on a planned input; outputs are full
// (broadcast) shape, returned contiguous. Undefined stats: the backend
// recomputes them in the same pass where it can (recomputes_stats), and
// otherwise they are computed here first by its reduction.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> weights_op(
    const Plan& pl, at::Tensor stats, const at::Tensor& g,
    int64_t g_so, int64_t g_si, std::array<bool, 2> mask, double beta = 1.0,
    int mode = kNegWeight) {
  auto a = geometry_args<WeightsArgs>(pl);
  a.beta = beta;
  a.mode = mode;
  a.g = g.defined() ? g.const_data_ptr() : nullptr;
  a.g_so = g_so;
  a.g_si = g_si;
  at::Tensor out_p, out_q;
  if (mask[0]) {
    out_p = pl.empty_full(pl.dtype, a.out_so, a.out_sk, a.out_si, Kernels::output_allocator());
    a.out_p = out_p.mutable_data_ptr();
  }
  if (mask[1]) {
    out_q = pl.empty_full(pl.dtype, a.out_so, a.out_sk, a.out_si, Kernels::output_allocator());
    a.out_q = out_q.mutable_data_ptr();
  }
  if (!stats.defined() && !Kernels::recomputes_stats(a)) {
    stats = empty_output<Kernels>(pl, stats_shape(pl), opmath_dtype(pl.dtype));
    auto r = geometry_args<ReduceArgs>(pl);
    r.beta = beta;
    r.stats = stats.mutable_data_ptr();
    Kernels::reduce(r);
  }
  a.stats = stats.defined() ? stats.const_data_ptr() : nullptr;
  Kernels::weights(a);
  canonical_output(pl, out_p);
  canonical_output(pl, out_q);
  return {out_p, out_q};
}

template <class Kernels>
at::Tensor iwelbo(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q,
    int64_t dim, bool keepdim, double alpha) {
  return std::get<0>(reduce_op<Kernels>(
      "iwelbo", log_p, log_q, dim, keepdim, true, false, false,
      renyi_beta("iwelbo", alpha)));
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> iwelbo_forward(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q,
    int64_t dim, bool keepdim, double alpha) {
  return reduce_op<Kernels>(
      "iwelbo", log_p, log_q, dim, keepdim, true, true, false,
      renyi_beta("iwelbo", alpha));
}

// The mergeable state of a chunk of samples: [2, *batch] in opmath, the
// shift and log sum exp(log_w - shift) (-inf for an all -inf slice).
template <class Kernels>
at::Tensor logsumexp_stats(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q,
    int64_t dim) {
  return std::get<1>(reduce_op<Kernels>(
      "iwelbo_state", log_p, log_q, dim, false, false, true, true));
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> iwelbo_backward(
    const at::Tensor& grad, const at::Tensor& stats, const at::Tensor& log_p,
    const std::optional<at::Tensor>& log_q, int64_t dim, bool keepdim,
    double alpha, std::array<bool, 2> output_mask) {
  const char* op = "iwelbo_backward";
  const double beta = renyi_beta(op, alpha);
  Plan pl = make_plan(op, log_p, log_q, dim);
  const auto out_shape = pl.out_shape(keepdim);
  TORCH_CHECK_VALUE(
      grad.sizes() == at::IntArrayRef(out_shape), op,
      "(): expected grad of shape ", at::IntArrayRef(out_shape),
      " (the shape of the bound), but got ", grad.sizes());
  const auto st_shape = stats_shape(pl);
  // Stats of shape [0]: not saved by the forward (autograd.cpp decides).
  const bool saved = !(stats.dim() == 1 && stats.size(0) == 0);
  TORCH_CHECK_VALUE(
      !saved ||
          (stats.sizes() == at::IntArrayRef(st_shape) &&
           stats.scalar_type() == opmath_dtype(pl.dtype)),
      op, "(): expected stats of shape ", at::IntArrayRef(st_shape),
      " and dtype ", opmath_dtype(pl.dtype),
      " (from _iwelbo_forward), or of shape [0] (not saved), but got ",
      stats.sizes(), " and ", stats.scalar_type());
  common_device(op, {{"log_p", &log_p}, {"grad", &grad}, {"stats", &stats}});
  if (beta == 0.0) { // the ELBO: every sample has weight 1/K
    const at::Tensor g = keepdim || pl.shape.empty() ? grad : grad.unsqueeze(pl.dim);
    const at::Tensor w =
        at::div(g.to(pl.dtype), static_cast<double>(pl.K)).expand(pl.shape).contiguous();
    return {output_mask[0] ? w : at::empty({0}, opts(pl, pl.dtype)),
            output_mask[1] ? at::neg(w) : at::empty({0}, opts(pl, pl.dtype))};
  }
  at::Tensor st;
  if (saved) {
    st = stats.contiguous();
  } else if (std::abs(beta) < kRenyiDirectMinBeta) { // as the forward takes them
    st = std::get<1>(renyi_near_elbo(pl, log_p, log_q, keepdim, beta, false, true));
  }
  const IncomingGrad g = incoming_grad(pl, grad, keepdim, !pl.vec_k);
  return weights_op<Kernels>(pl, st, g.g, g.so, g.si, output_mask, beta);
}

// The effective sample size 1 / sum w^2 = (sum w)^2 / sum w^2 and the largest
// normalised weight per example, from one pass (kernel_args.h).
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> weight_diagnostics(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q,
    int64_t dim) {
  Plan pl = make_plan("effective_sample_size", log_p, log_q, dim);
  const auto shape = pl.out_shape(false);
  at::Tensor ess = at::empty(shape, opts(pl, pl.dtype));
  at::Tensor max_w = at::empty(shape, opts(pl, pl.dtype));
  auto a = geometry_args<ReduceArgs>(pl);
  a.ess = ess.mutable_data_ptr();
  a.max_w = max_w.mutable_data_ptr();
  Kernels::reduce(a);
  return {ess, max_w};
}

// DReG's backward (Tucker et al. 2018): g * w for log_p and the z-path
// correction g * (t(w) - w) (t = w^2 for "dreg", w - w^2 for "rws"), in one
// pass; autograd.cpp turns the correction into the z gradient.
inline int dreg_mode(const std::string& z_weight) {
  if (z_weight == "dreg") return kDregSquare;
  if (z_weight == "rws") return kDregRws;
  TORCH_CHECK_VALUE(
      false, "dreg(): expected z_weight to be 'dreg', 'stl' or 'rws', but got '",
      z_weight, "'");
  return kNegWeight;
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> dreg_backward(
    const at::Tensor& grad, const at::Tensor& stats, const at::Tensor& log_p,
    const at::Tensor& log_q, int64_t dim, std::string z_weight) {
  const int mode = dreg_mode(z_weight);
  const char* op = "dreg_backward";
  Plan pl = make_plan(op, log_p, log_q, dim);
  common_device(op, {{"log_p", &log_p}, {"grad", &grad}, {"stats", &stats}});
  const auto out_shape = pl.out_shape(false);
  TORCH_CHECK_VALUE(
      grad.sizes() == at::IntArrayRef(out_shape), op, "(): expected grad of shape ",
      at::IntArrayRef(out_shape), ", but got ", grad.sizes());
  TORCH_CHECK_VALUE(
      stats.sizes() == at::IntArrayRef(stats_shape(pl)) &&
          stats.scalar_type() == opmath_dtype(pl.dtype),
      op, "(): expected stats from _iwelbo_forward, but got ", stats.sizes(), " and ",
      stats.scalar_type());
  const IncomingGrad g = incoming_grad(pl, grad, false, !pl.vec_k);
  return weights_op<Kernels>(
      pl, stats.contiguous(), g.g, g.so, g.si, {true, true}, 1.0, mode);
}

template <class Kernels>
at::Tensor dreg_value(
    const at::Tensor& log_p, const at::Tensor& log_q, const at::Tensor& z,
    int64_t dim, std::string z_weight) {
  if (z_weight != "stl") dreg_mode(z_weight); // checks the name
  // The dispatcher passes None for a Tensor as an undefined tensor; z is
  // only read by the backward, which would then fail far from the call.
  TORCH_CHECK_TYPE(z.defined(), "dreg(): expected z to be a torch.Tensor, but got None");
  common_device("dreg", {{"log_p", &log_p}, {"log_q", &log_q}, {"z", &z}});
  return iwelbo<Kernels>(log_p, log_q, dim, false, 0.0);
}

template <class Kernels>
at::Tensor normalized_weights(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q,
    int64_t dim) {
  const char* op = "normalized_weights";
  Plan pl = make_plan(op, log_p, log_q, dim);
  return std::get<0>(
      weights_op<Kernels>(pl, at::Tensor(), at::Tensor(), 0, 0, {true, false}));
}

} // namespace iwae_fused
