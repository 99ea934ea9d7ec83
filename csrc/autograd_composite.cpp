// The differentiable path of iwelbo (autograd_composite.h): what runs under
// forward-mode AD, create_graph=True and torch.func transforms.
#include "autograd_composite.h"
#include "log_mean_exp.h"

#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/WrapDimUtils.h>

#include <cmath>

namespace iwae_fused {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// A grad/jvp-type functorch transform is processing this call: the Autograd
// key only runs with a layer on the stack under grad, vjp, jvp and friends
// (vmap and functionalize exclude the autograd keys while they process, and
// pop their layer before dispatching below them).
// (ATen/functorch/DynamicLayer.h, which would say so directly, needs headers
// torch does not ship; the functorch TLS answers through the check that C++
// Functions' apply() makes. It exists once a transform has run on this thread,
// and throws only while one is active, i.e. only off the fast path.)
bool under_functorch_transform() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
    return false;
  } catch (const c10::Error&) {
    return true;
  }
}

bool has_tangent(const Tensor& t) {
  return t.defined() && t._fw_grad(/*level=*/0).defined();
}

bool has_tangent(const OptTensor& t) {
  return t.has_value() && has_tangent(*t);
}

static at::ScalarType opmath(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// log w = log_p - log_q in opmath (promoted and broadcast as the op does), with
// a 0-dim input viewed as one sample, and the wrapped sample dim.
static std::pair<Tensor, int64_t> composite_log_w(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim) {
  Tensor log_w = log_q.has_value() ? log_p - *log_q : log_p;
  log_w = log_w.to(opmath(log_w.scalar_type()));
  if (log_w.dim() == 0) {
    TORCH_CHECK_INDEX(dim == 0 || dim == -1, "iwelbo(): dim=", dim,
        " is out of range for log-weights of shape [] (expected dim in [-1, 0])");
    return {log_w.unsqueeze(0), 0};
  }
  TORCH_CHECK_INDEX(dim >= -log_w.dim() && dim < log_w.dim(), "iwelbo(): dim=", dim,
      " is out of range for log-weights of shape ", log_w.sizes(), " (expected dim in [",
      -log_w.dim(), ", ", log_w.dim() - 1, "])");
  return {log_w, at::maybe_wrap_dim(dim, log_w.dim())};
}

// beta log w, its per-slice shift (the max, detached: any constant shift gives
// the same derivatives) and the mask of slices whose log-weights are all -inf.
// exp(beta log w - shift) is then 0 on such a slice, and every where() below
// keeps its derivatives at 0 at every order (no inf - inf, no 0 * inf).
namespace {
struct Shifted {
  Tensor e;      // exp(beta log w - shift)
  Tensor shift;  // keepdim
  Tensor empty;  // keepdim, bool
};
} // namespace

static Shifted shifted_exp(const Tensor& log_w, int64_t d, double beta) {
  Tensor x = log_w * beta;
  Tensor m = at::amax(x.detach(), d, /*keepdim=*/true);
  Tensor empty = m == -INFINITY;
  Tensor shift = at::where(at::isfinite(m), m, at::zeros_like(m));
  return {at::exp(x - shift), shift, empty};
}

// iwelbo as differentiable ATen ops (value equal to the kernel's to rounding).
Tensor iwelbo_composite(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim, bool keepdim,
    double alpha) {
  TORCH_CHECK_VALUE(std::isfinite(alpha), "iwelbo(): expected a finite alpha, but got ", alpha);
  const auto out_type = log_q.has_value()
      ? at::result_type(log_p, *log_q) : log_p.scalar_type();
  // The errors of csrc/plan.cpp (type and message) for what ATen would
  // otherwise report in its own words.
  for (const Tensor* t : {&log_p, log_q.has_value() ? &*log_q : &log_p}) {
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()),
        "iwelbo(): expected floating-point log-weights, but got ", t->scalar_type());
  }
  if (log_q.has_value()) {
    const auto a = log_p.sym_sizes(), b = log_q->sym_sizes();
    const size_t n = std::max(a.size(), b.size());
    for (size_t i = 0; i < n; ++i) {
      const c10::SymInt sa = i < n - a.size() ? c10::SymInt(1) : a[i - (n - a.size())];
      const c10::SymInt sb = i < n - b.size() ? c10::SymInt(1) : b[i - (n - b.size())];
      TORCH_CHECK_VALUE(sa == sb || sa == 1 || sb == 1, "iwelbo(): log_p of shape ", a,
          " and log_q of shape ", b, " do not broadcast (as for log_p - log_q)");
    }
    TORCH_CHECK(log_p.device() == log_q->device(), "iwelbo(): expected log_p and log_q "
        "on the same device, but log_p is on ", log_p.device(), " and log_q is on ",
        log_q->device());
  }
  const bool scalar = std::max(log_p.dim(), log_q.has_value() ? log_q->dim() : 0) == 0;
  auto [log_w, d] = composite_log_w(log_p, log_q, dim);
  const int64_t K = log_w.sym_size(d).guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(K > 0, "iwelbo(): the sample dimension dim=", dim,
      " has size 0, but at least one importance sample is needed");
  const bool keep = keepdim && !scalar;
  Tensor out;
  if (alpha == 1.0) {
    // The ELBO is linear in log w: exactly the mean, as the kernel computes it.
    out = log_w.mean(d, keep);
  } else if (std::abs(1.0 - alpha) < kRenyiDirectMinBeta) {
    // Near the ELBO: the op's near-ELBO form (log_mean_exp.h), chosen per
    // slice by the spread, so that this path is as accurate as the op's.
    const double beta = 1.0 - alpha;
    Tensor x = log_w * beta;
    Tensor m = at::amax(x.detach(), d, /*keepdim=*/true);
    Tensor empty = m == -INFINITY;
    Tensor shift = at::where(at::isfinite(m), m, at::zeros_like(m));
    // An empty slice reduces zeros instead of -inf: log(0) has no derivative.
    Tensor diff = at::where(empty, at::zeros_like(x), x - shift);
    Tensor lse = at::where(
        empty, at::full_like(m, -INFINITY), shift + log_mean_exp(diff, d, K).log_mean);
    out = lse / beta;
    if (!keep) out = out.squeeze(d);
  } else {
    const double beta = 1.0 - alpha;
    auto [e, shift, empty] = shifted_exp(log_w, d, beta);
    Tensor s = e.sum(d, /*keepdim=*/true);
    Tensor s_safe = at::where(empty, at::ones_like(s), s);
    Tensor lse = at::where(
        empty, at::full_like(s, -INFINITY), at::log(s_safe) + shift);
    out = (lse - std::log(static_cast<double>(K))) / beta;
    if (!keep) out = out.squeeze(d);
  }
  return out.to(out_type);
}

// softmax(beta log w) as differentiable ATen ops: the weights the gradient of
// iwelbo is made of, 0 on an all -inf slice; uniform 1/K at alpha = 1.
Tensor weights_composite(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim, double alpha) {
  auto [log_w, d] = composite_log_w(log_p, log_q, dim);
  const int64_t K = log_w.sym_size(d).guard_int(__FILE__, __LINE__);
  if (alpha == 1.0) {
    return at::full_like(log_w, 1.0 / static_cast<double>(K)).detach();
  }
  auto [e, shift, empty] = shifted_exp(log_w, d, 1.0 - alpha);
  Tensor s = e.sum(d, /*keepdim=*/true);
  return e / at::where(empty, at::ones_like(s), s);
}

} // namespace iwae_fused
