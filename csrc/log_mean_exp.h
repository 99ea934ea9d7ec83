// log((1/K) sum_k exp(d_k)) for the Renyi bound near alpha = 1, as composite
// ATen ops, accurate for any spread of the d_k. Shared by the op glue's
// near-ELBO path (ops_glue.h, plain tensors below autograd) and the
// differentiable composite (autograd_composite.cpp, tensors with autograd
// history), so the two compute the same value the same way.
//
// The Renyi bound is (shift + log v) / beta with y = beta log w, shift its
// max and v = (1/K) sum exp(y - shift) in [1/K, 1]. Near alpha = 1 (|beta|
// small) the result log v is of order beta times the log-weights' spread and
// is then divided by beta, so log v needs full *relative* precision, which
// neither of its two natural forms has for every spread:
//  * log(s) - log K, s = sum exp(d): for y within ~a nat of each other
//    (v near 1) it is the difference of two nearly equal logs (an error of
//    ~eps log K in a result of order beta: eps / beta relative);
//  * log1p(u / K), u = sum expm1(d) = s - K, a sum of terms in [-1, 0] that
//    keeps its relative precision: for spread-out y (most expm1 near -1,
//    v near 1/K) 1 + u / K cancels (a relative error of ~K eps: 3e-3 in
//    float32 at K = 3000, as the bound of x = [0, -60 x 2999] at alpha = 0.8
//    showed).
// So the form is chosen per slice by v itself, i.e. by the spread: log1p(u/K)
// where v > 1/2 (then 1 + u/K >= 1/2 takes no cancellation and |log v| <=
// log 2 keeps the relative precision of u), log(s / K) where v <= 1/2 (then
// |log v| >= log 2, so the rounding of s / K is relative to the result).
// Either way log v has a relative error of a few eps (times log K from the
// sums and the rounding of d), for every beta and every spread.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/div.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/expm1.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log1p.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

namespace iwae_fused {

// Below this |beta| the Renyi bound goes through this header's form (the
// near-ELBO path) rather than the fused kernels, whose log(s) - log K loses
// ~eps log K / |beta| of the bound where the y are close together (1e-2 in
// float32 at beta = 1e-5). From here on that loss is at most ~4 eps log K
// absolute, a few float32 ulps of a bound of order log K or more.
constexpr double kRenyiDirectMinBeta = 0.25;

struct LogMeanExp {
  at::Tensor log_mean; // log((1/K) sum exp(d)), keepdim
  at::Tensor sum; // sum exp(d), keepdim: the stats' log_norm is its log
};

// d: values whose per-slice max along dim is 0 (y - shift), or a slice of
// -inf (log_mean -inf, sum 0), +inf (+inf) or NaN (NaN). Differentiable
// wherever the result is finite; a caller that differentiates masks empty
// slices first (d = 0 there), since log(0) has no derivative.
inline LogMeanExp log_mean_exp(const at::Tensor& d, int64_t dim, int64_t K) {
  const double k = static_cast<double>(K);
  const at::Tensor s = at::sum(at::exp(d), dim, /*keepdim=*/true);
  const at::Tensor u = at::sum(at::expm1(d), dim, /*keepdim=*/true);
  const at::Tensor v = at::div(s, k);
  const at::Tensor near_one = at::gt(v, 0.5);
  // Each form sees a harmless input where it is not chosen (the other
  // where()), so that no inf or NaN derivative of the unused one reaches a
  // gradient as 0 * inf.
  const at::Tensor near = at::log1p(at::div(at::where(near_one, u, at::zeros_like(u)), k));
  const at::Tensor far = at::log(at::where(near_one, at::ones_like(v), v));
  return {at::where(near_one, near, far), s};
}

} // namespace iwae_fused
