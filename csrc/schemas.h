// Every op's schema, in one place: the library iwae_fused (iwae_fused.cpp)
// and the emulated CUDA backend's iwae_fused_emu (cuda/emu/ops_emu.cpp)
// define the same ops from here.
#pragma once

#include <torch/library.h>

#include <vector>

namespace iwae_fused {

inline void define_schemas(torch::Library& m) {
  const std::vector<at::Tag> pt2{at::Tag::pt2_compliant_tag};
  // log((1/K) sum_k exp(log_p - log_q)) over `dim`; with alpha, the Renyi
  // bound (1/(1-alpha)) [log sum exp((1-alpha) log w) - log K].
  m.def(
      "iwelbo(Tensor log_p, Tensor? log_q=None, int dim=0, "
      "bool keepdim=False, float alpha=0.0) -> Tensor",
      pt2);
  // The bound and the per-example stats the backward reuses: [2, *bound
  // shape without keepdim] in opmath, the max shift and log sum exp(x - shift).
  m.def(
      "_iwelbo_forward(Tensor log_p, Tensor? log_q, int dim, bool keepdim, "
      "float alpha=0.0) -> (Tensor, Tensor)",
      pt2);
  // grad_log_p = g * w and grad_log_q = -g * w, w = softmax((1-alpha) log w),
  // in one pass, full broadcast shape; an output off in output_mask comes
  // back as an empty tensor. stats of shape [0]: not saved (the GPU's
  // training step, for rows that fit a 16-byte vector: saved_stats.h); the
  // kernel recomputes them where it can, the glue computes them otherwise.
  m.def(
      "iwelbo_backward(Tensor grad, Tensor stats, Tensor log_p, Tensor? log_q, "
      "int dim, bool keepdim, float alpha, bool[2] output_mask) -> (Tensor, Tensor)",
      pt2);
  // The mergeable state of the bound over a chunk of samples: [2, *bound
  // shape] in opmath, the shift and log sum exp(log_w - shift); see
  // iwae_fused/evaluation.py. Not differentiable.
  m.def(
      "logsumexp_stats(Tensor log_p, Tensor? log_q=None, int dim=0) -> Tensor",
      pt2);
  // DReG (Tucker et al. 2018): the IWAE bound; log_q computed with q's
  // parameters detached, z the reparameterized samples both came from. The
  // backward gives log_p g w and z the w^2-weighted path (z_weight "dreg"),
  // w - w^2 ("rws") or w ("stl").
  m.def(
      "dreg(Tensor log_p, Tensor log_q, Tensor z, int dim=0, str z_weight=\"dreg\") "
      "-> Tensor",
      pt2);
  m.def(
      "dreg_backward(Tensor grad, Tensor stats, Tensor log_p, Tensor log_q, int dim, "
      "str z_weight) -> (Tensor, Tensor)",
      pt2);
  // VIMCO (Mnih & Rezende 2016): the IWAE bound, whose backward gives log_p
  // the weights w and log_q the leave-one-out signal (L - L_-j) - w_j.
  m.def(
      "vimco(Tensor log_p, Tensor log_q, int dim=0, bool keepdim=False) -> Tensor",
      pt2);
  m.def(
      "_vimco_forward(Tensor log_p, Tensor log_q, int dim, bool keepdim) "
      "-> (Tensor, Tensor)",
      pt2);
  m.def(
      "vimco_backward(Tensor grad, Tensor state, Tensor log_p, Tensor log_q, "
      "int dim, bool keepdim, bool[2] output_mask) -> (Tensor, Tensor)",
      pt2);
  // Effective sample size and the largest normalised weight per example,
  // from one pass; not differentiable.
  m.def(
      "weight_diagnostics(Tensor log_p, Tensor? log_q=None, int dim=0) "
      "-> (Tensor, Tensor)",
      pt2);
  // softmax(log_p - log_q) over `dim`; not differentiable.
  m.def(
      "normalized_weights(Tensor log_p, Tensor? log_q=None, int dim=0) "
      "-> Tensor",
      pt2);
}

} // namespace iwae_fused
