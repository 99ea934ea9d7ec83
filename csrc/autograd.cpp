// Gradients, registered at the Autograd key in C++ so a training step pays no
// Python on the autograd path (a Python-registered autograd formula costs
// ~100 us per step at the dispatch-bound training shapes).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/ExpandUtils.h>
#include <ATen/WrapDimUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include "autograd_composite.h"
#include "log_mean_exp.h"
#include "saved_stats.h"

#include <atomic>
#include <mutex>

namespace iwae_fused {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

c10::TypedOperatorHandle<Tensor(const Tensor&, const OptTensor&, int64_t, bool, double)>&
iwelbo_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::iwelbo", "")
          .typed<Tensor(const Tensor&, const OptTensor&, int64_t, bool, double)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(
    const Tensor&, const OptTensor&, int64_t, bool, double)>&
forward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::_iwelbo_forward", "")
          .typed<std::tuple<Tensor, Tensor>(
              const Tensor&, const OptTensor&, int64_t, bool, double)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t,
    bool, double, std::array<bool, 2>)>&
backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::iwelbo_backward", "")
          .typed<std::tuple<Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
              int64_t, bool, double, std::array<bool, 2>)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, int64_t)>&
diagnostics_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::weight_diagnostics", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, int64_t)>();
  return op;
}

c10::TypedOperatorHandle<Tensor(const Tensor&, const OptTensor&, int64_t)>&
weights_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("iwae_fused::normalized_weights", "")
                       .typed<Tensor(const Tensor&, const OptTensor&, int64_t)>();
  return op;
}

// A broadcast input gets its gradient summed over the broadcast, in its own
// dtype, as autograd does for log_p - log_q.
Tensor to_input(Tensor grad, const Tensor& input) {
  if (grad.sym_sizes() != input.sym_sizes()) {
    grad = at::sum_to(grad, input.sym_sizes());
  }
  if (grad.scalar_type() != input.scalar_type()) {
    grad = grad.to(input.scalar_type());
  }
  return grad;
}


// ---- the slow paths: forward-mode AD, double backward, torch.func -----------
//
// A C++ graph node (torch::autograd::Function's, or iwelbo's own below)
// supports neither forward-mode AD nor functorch transforms (Function's
// apply() refuses a non-empty functorch stack, and an input that carries only
// a tangent used to skip it and come back with no tangent: a silent zero).
// Rather than move the training path to a Python autograd.Function (~100 us
// per call), the Autograd kernels below keep the fused node when neither is
// in play, and otherwise compute the
// bound as a composite of differentiable ATen ops with the same -inf rules:
// ATen's own autograd, forward AD and batching rules then give every order,
// every transform and every composition of them (csrc/autograd_composite.cpp).
// The checks cost a thread-local pointer test and one forward-grad lookup per
// input (tens of ns; benchmarks/NOTES.md, entry 10).

// Derivatives of a surrogate estimator are not derivatives of anything: its
// gradients are returned through a node that raises this when differentiated
// (the check happens only if someone does, as for once_differentiable).
torch::autograd::variable_list raise_if_differentiated(
    const char* op, torch::autograd::variable_list grads) {
  if (!at::GradMode::is_enabled()) return grads;
  const std::string msg = std::string(op) +
      "(): double backward is not supported: its backward computes a surrogate "
      "gradient estimator, not the derivative of its value, so the estimator "
      "has no derivative to take. Differentiate iwae_fused.iwelbo for the bound's "
      "higher derivatives.";
  const auto n = static_cast<int64_t>(grads.size());
  return torch::autograd::DelayedError(msg, n)(std::move(grads));
}

void check_surrogate_supported(const char* op, bool any_tangent, bool any_grad) {
  TORCH_CHECK(
      !any_tangent,
      op, "(): forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, jacfwd) "
      "is not supported: its gradient is a surrogate estimator, not the derivative "
      "of its value, so there is no tangent that agrees with it. Use "
      "iwae_fused.iwelbo for the tangent of the bound.");
  TORCH_CHECK(
      !(any_grad && under_functorch_transform()),
      op, "(): torch.func transforms that differentiate (grad, vjp, jacrev, "
      "jacfwd, hessian, jvp) are not supported: its gradient is a surrogate "
      "estimator, not the derivative of its value. Call loss.backward() / "
      "torch.autograd.grad outside torch.func, or use iwae_fused.iwelbo. "
      "torch.vmap without differentiation is supported.");
}

std::atomic<bool> g_cpu_stands_for_gpu{false};

} // namespace

void set_cpu_stands_for_gpu(bool on) {
  g_cpu_stands_for_gpu.store(on);
}

bool cpu_stands_for_gpu() {
  return g_cpu_stands_for_gpu.load();
}

bool backward_recomputes_stats(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim, double alpha) {
  const bool gpu = log_p.is_cuda() || (log_p.is_cpu() && cpu_stands_for_gpu());
  if (!gpu || log_p.dim() == 0 || !at::isFloatingType(log_p.scalar_type()) ||
      log_p.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    return false;
  }
  const bool q_ok = !log_q.has_value() ||
      (log_q->scalar_type() == log_p.scalar_type() && log_q->sizes() == log_p.sizes() &&
       log_q->is_contiguous());
  const int64_t nd = log_p.dim();
  if (!q_ok || dim < -nd || dim >= nd) return false; // the op reports a bad dim
  const int64_t d = dim < 0 ? dim + nd : dim;
  const int64_t K = log_p.size(d);
  const int64_t vec = 16 / static_cast<int64_t>(log_p.element_size());
  const double beta = 1.0 - alpha;
  return (d == nd - 1 || K == 1) && K >= 1 && vec % K == 0 && log_p.is_contiguous() &&
      std::abs(beta) >= kRenyiDirectMinBeta;
}

namespace {

// iwelbo's gradients for the node below: log_q and stats may be undefined
// (no log_q; stats recomputed by the backward).
torch::autograd::variable_list iwelbo_grads(
    const Tensor& grad, const Tensor& log_p, const Tensor& log_q, const Tensor& stats,
    int64_t dim, bool keepdim, double alpha, std::array<bool, 2> mask) {
  // An undefined grad (the bound feeds nothing that needs a gradient) is
  // a zero one: so are the inputs' gradients, returned undefined as ATen's
  // own nodes return them.
  if (!grad.defined()) return {Tensor(), Tensor()};
  const bool has_q = log_q.defined();
  mask[1] = mask[1] && has_q;
  if (at::GradMode::is_enabled() || has_tangent(grad) || has_tangent(log_p) ||
      has_tangent(log_q)) {
    // create_graph=True (double backward), or forward-over-reverse: the
    // gradient g * softmax(beta log w) from differentiable ops, so its own
    // derivative is g beta (diag(w) - w w^T) along dim (0 on an all -inf
    // slice), and a tangent flows through it.
    const OptTensor q = has_q ? OptTensor(log_q) : std::nullopt;
    Tensor w = weights_composite(log_p, q, dim, alpha);  // full shape ([1] for 0-dim)
    Tensor g = grad;  // the bound's shape: dim dropped unless keepdim, [] for 0-dim
    if (g.dim() < w.dim()) g = g.unsqueeze(at::maybe_wrap_dim(dim, w.dim()));
    Tensor gw = (g * w).to(has_q ? at::result_type(log_p, log_q) : log_p.scalar_type());
    return {mask[0] ? to_input(gw, log_p) : Tensor(), mask[1] ? to_input(-gw, log_q) : Tensor()};
  }
  const Tensor st = stats.defined()
      ? stats
      : at::empty({0}, log_p.options().dtype(at::toOpMathType(log_p.scalar_type())));
  auto [gp, gq] = backward_op().call(
      grad, st, log_p, has_q ? OptTensor(log_q) : std::nullopt, dim, keepdim, alpha, mask);
  return {mask[0] ? to_input(gp, log_p) : Tensor(), mask[1] ? to_input(gq, log_q) : Tensor()};
}

// iwelbo_grads as compiled autograd calls it from its graph: the arguments
// packed by IwelboBackward::apply_with_saved (every tensor defined: log_p
// stands in for an absent log_q or stats, and two flags say which).
torch::autograd::variable_list iwelbo_grads_packed(
    const torch::autograd::variable_list& grads, const std::vector<c10::IValue>& args) {
  const Tensor log_p = args[0].toTensor();
  const Tensor log_q = args[6].toBool() ? args[1].toTensor() : Tensor();
  const Tensor stats = args[7].toBool() ? args[2].toTensor() : Tensor();
  return iwelbo_grads(grads[0], log_p, log_q, stats, args[3].toInt(), args[4].toBool(),
                      args[5].toDouble(), {args[8].toBool(), args[9].toBool()});
}

// The training step's graph node, written as a Node rather than through
// torch::autograd::Function: the Function's generic CppNode (its saved-data
// map of IValues, wrapped outputs, input and output infos) cost 1.3 us of an
// 18 us step at [50, 128], where ATen's own nodes cost next to nothing
// (benchmarks/NOTES.md CPU 25). What the backward needs is held as
// SavedVariables, so an in-place change of an input, saved-tensor hooks and a
// second backward behave as for any node.
struct IwelboBackward final : public torch::autograd::Node {
  torch::autograd::SavedVariable log_p_, log_q_, stats_; // stats_ undefined: recomputed
  int64_t dim_ = 0;
  bool keepdim_ = false;
  double alpha_ = 0.0;

  std::string name() const override {
    return "IwelboBackward";
  }

  // mutex_: a second backward on another thread (retain_graph) may release
  // what this one unpacks (Note [Thread Safety on Autograd Node], as
  // torch's own nodes lock it).
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    log_p_.reset_data();
    log_q_.reset_data();
    stats_.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    // (task_should_compute_output: false for an input torch.autograd.grad
    // was not asked about.)
    return iwelbo_grads(grads[0], log_p_.unpack(), log_q_.unpack(), stats_.unpack(), dim_,
                        keepdim_, alpha_,
                        {task_should_compute_output(0), task_should_compute_output(1)});
  }

  // Compiled autograd: the node's state as cache key and graph inputs, and
  // the backward as one call in its graph (iwelbo_grads_packed, traced
  // through the ops' fake implementations), as torch::autograd::Function's
  // nodes are.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(log_p_, false);
    args.collect(log_q_, false);
    args.collect(stats_, false);
    args.collect(dim_);
    args.collect(keepdim_);
    args.collect(alpha_);
  }

  torch::autograd::variable_list apply_with_saved(
      const torch::autograd::variable_list& grads,
      torch::dynamo::autograd::SwapSavedVariables& saved) override {
    saved.before(log_p_);
    saved.before(log_q_);
    saved.before(stats_);
    const Tensor p = log_p_.unpack(), q = log_q_.unpack(), st = stats_.unpack();
    std::vector<c10::IValue> args{
        p, q.defined() ? q : p, st.defined() ? st : p, dim_, keepdim_, alpha_,
        q.defined(), st.defined(), task_should_compute_output(0),
        task_should_compute_output(1)};
    std::vector<at::TypePtr> schema;
    for (const auto& a : args) {
      schema.push_back(a.isTensor() ? at::TensorType::get() : a.type());
    }
    const auto& py = torch::dynamo::autograd::getPyCompilerInterface();
    const auto fn = py->bind_function(
        saved.get_py_compiler(), name(), iwelbo_grads_packed, schema,
        /*is_custom_function=*/true, /*is_traceable=*/true);
    const auto output_metadata =
        torch::dynamo::autograd::IValuePacker<std::vector<std::optional<
            torch::autograd::InputMetadata>>>::pack(torch::dynamo::autograd::get_input_metadata(
            next_edges()));
    auto result = py->call_function(
        saved.get_py_compiler(), "apply_functional", fn, grads, args, output_metadata);
    saved.after(log_p_);
    saved.after(log_q_);
    saved.after(stats_);
    return result;
  }
};

Tensor iwelbo_autograd(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim, bool keepdim,
    double alpha) {
  const bool needs_grad = at::GradMode::is_enabled() &&
      (log_p.requires_grad() || (log_q.has_value() && log_q->requires_grad()));
  if (has_tangent(log_p) || has_tangent(log_q) || under_functorch_transform()) {
    // Forward-mode AD, or a torch.func transform: see the note above.
    return iwelbo_composite(log_p, log_q, dim, keepdim, alpha);
  }
  Tensor out, stats; // stats undefined: the backward recomputes them
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (!needs_grad || backward_recomputes_stats(log_p, log_q, dim, alpha)) {
      // No graph, or a backward that recomputes the stats: none to save.
      out = iwelbo_op().call(log_p, log_q, dim, keepdim, alpha);
    } else {
      std::tie(out, stats) = forward_op().call(log_p, log_q, dim, keepdim, alpha);
    }
  }
  if (!needs_grad) return out;
  auto node = c10::make_intrusive<IwelboBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(log_p, log_q));
  node->log_p_ = torch::autograd::SavedVariable(log_p, false);
  node->log_q_ = torch::autograd::SavedVariable(log_q.value_or(Tensor()), false);
  node->stats_ = torch::autograd::SavedVariable(stats, false);
  node->dim_ = dim;
  node->keepdim_ = keepdim;
  node->alpha_ = alpha;
  torch::autograd::set_history(out, node);
  return out;
}

// The weights are returned as constants (no graph), as reweighted wake-sleep
// uses them; differentiate through iwelbo instead.
Tensor normalized_weights_autograd(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return weights_op().call(log_p, log_q, dim);
}

c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, int64_t, bool)>&
vimco_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("iwae_fused::vimco", "")
                       .typed<Tensor(const Tensor&, const Tensor&, int64_t, bool)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(
    const Tensor&, const Tensor&, int64_t, bool)>&
vimco_forward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::_vimco_forward", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, bool)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, bool,
    std::array<bool, 2>)>&
vimco_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::vimco_backward", "")
          .typed<std::tuple<Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
              bool, std::array<bool, 2>)>();
  return op;
}

// VIMCO's backward is not the derivative of its value for log_q: it is the
// estimator (the leave-one-out signal), so it is its own Function.
struct VimcoFunction : public torch::autograd::Function<VimcoFunction> {
  static Tensor forward(
      torch::autograd::AutogradContext* ctx, const Tensor& log_p,
      const Tensor& log_q, int64_t dim, bool keepdim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, state] = vimco_forward_op().call(log_p, log_q, dim, keepdim);
    ctx->save_for_backward({log_p, log_q, state});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["keepdim"] = keepdim;
    return out;
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    check_surrogate_supported(
        "vimco", has_tangent(grads[0]) || has_tangent(saved[0]) || has_tangent(saved[1]), false);
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    auto [gp, gq] = vimco_backward_op().call(
        grads[0], saved[2], saved[0], saved[1], ctx->saved_data["dim"].toInt(),
        ctx->saved_data["keepdim"].toBool(), mask);
    return raise_if_differentiated("vimco", {
        mask[0] ? to_input(gp, saved[0]) : Tensor(),
        mask[1] ? to_input(gq, saved[1]) : Tensor(), Tensor(), Tensor()});
  }
};

Tensor vimco_autograd(const Tensor& log_p, const Tensor& log_q, int64_t dim, bool keepdim) {
  const bool needs_grad =
      at::GradMode::is_enabled() && (log_p.requires_grad() || log_q.requires_grad());
  check_surrogate_supported("vimco", has_tangent(log_p) || has_tangent(log_q), needs_grad);
  if (!needs_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return vimco_op().call(log_p, log_q, dim, keepdim);
  }
  return VimcoFunction::apply(log_p, log_q, dim, keepdim);
}

c10::TypedOperatorHandle<Tensor(
    const Tensor&, const Tensor&, const Tensor&, int64_t, std::string)>&
dreg_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::dreg", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, std::string)>();
  return op;
}

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, std::string)>&
dreg_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("iwae_fused::dreg_backward", "")
          .typed<std::tuple<Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
              std::string)>();
  return op;
}

// DReG: log_p's direct path (the generative parameters) must see g w, while
// the samples z (and through them the inference network) must see g t(w)
// times d log w / dz, with t(w) = w^2 (or w - w^2, or w for STL). log_p and
// log_q both depend on z, so the usual backward (g w into log_p, -g w into
// log_q) already gives z g w d log w/dz; the backward adds the difference
// g (t(w) - w) d log w / dz, a vector-Jacobian product through the saved
// log_p and log_q graphs (a reentrant autograd::grad, as checkpointing does).
struct DregFunction : public torch::autograd::Function<DregFunction> {
  static Tensor forward(
      torch::autograd::AutogradContext* ctx, const Tensor& log_p,
      const Tensor& log_q, const Tensor& z, int64_t dim, std::string z_weight) {
    TORCH_CHECK_VALUE(
        z_weight == "dreg" || z_weight == "stl" || z_weight == "rws",
        "dreg(): expected z_weight to be 'dreg', 'stl' or 'rws', but got '", z_weight, "'");
    TORCH_CHECK(
        z.device() == log_p.device(), "dreg(): expected z on ", log_p.device(),
        " like log_p, but got ", z.device());
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, stats] = forward_op().call(log_p, log_q, dim, false, 0.0);
    ctx->save_for_backward({log_p, log_q, z, stats});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["z_weight"] = z_weight;
    return out;
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &log_p = saved[0], &log_q = saved[1], &z = saved[2];
    check_surrogate_supported(
        "dreg", has_tangent(grads[0]) || has_tangent(log_p) || has_tangent(log_q) ||
            has_tangent(z), false);
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const std::string z_weight = ctx->saved_data["z_weight"].toStringRef();
    Tensor gp, corr;
    if (z_weight == "stl") { // the plain path is STL's: no correction
      auto [p, q] = backward_op().call(
          grads[0], saved[3], log_p, log_q, dim, false, 0.0, {true, false});
      gp = p;
    } else {
      std::tie(gp, corr) =
          dreg_backward_op().call(grads[0], saved[3], log_p, log_q, dim, z_weight);
    }
    Tensor gz;
    if (corr.defined() && z.requires_grad() &&
        (log_p.requires_grad() || log_q.requires_grad())) {
      at::AutoGradMode enable(true);
      std::vector<Tensor> outs, gouts;
      if (log_p.requires_grad()) outs.push_back(log_p), gouts.push_back(corr);
      if (log_q.requires_grad()) outs.push_back(log_q), gouts.push_back(-corr);
      auto res = torch::autograd::grad(
          // create_graph keeps gz attached, so that differentiating it reaches
          // the error below instead of a silent constant.
          outs, {z}, gouts, /*retain_graph=*/true,
          /*create_graph=*/at::GradMode::is_enabled(),
          /*allow_unused=*/true);
      gz = res[0];
      // z off both graphs (a view or copy made after log_p and log_q were
      // computed) would silently drop the correction: another estimator.
      TORCH_CHECK_VALUE(
          gz.defined(),
          "dreg(): z is not an input of log_p's or log_q's autograd graph, so its "
          "gradient cannot be weighted; pass the tensor both were computed from "
          "(not a view or copy made afterwards)");
    }
    return raise_if_differentiated("dreg", {
        ctx->needs_input_grad(0) ? to_input(gp, log_p) : Tensor(),
        ctx->needs_input_grad(1) ? to_input(-gp, log_q) : Tensor(),
        ctx->needs_input_grad(2) ? gz : Tensor(), Tensor(), Tensor()});
  }
};

Tensor dreg_autograd(
    const Tensor& log_p, const Tensor& log_q, const Tensor& z, int64_t dim,
    std::string z_weight) {
  const bool any = log_p.requires_grad() || log_q.requires_grad() || z.requires_grad();
  check_surrogate_supported(
      "dreg", has_tangent(log_p) || has_tangent(log_q) || has_tangent(z),
      at::GradMode::is_enabled() && any);
  if (!(at::GradMode::is_enabled() && any)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return dreg_op().call(log_p, log_q, z, dim, std::move(z_weight));
  }
  return DregFunction::apply(log_p, log_q, z, dim, std::move(z_weight));
}

// Diagnostics are constants too.
std::tuple<Tensor, Tensor> weight_diagnostics_autograd(
    const Tensor& log_p, const OptTensor& log_q, int64_t dim) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return diagnostics_op().call(log_p, log_q, dim);
}

} // namespace

TORCH_LIBRARY_IMPL(iwae_fused, Autograd, m) {
  m.impl("iwelbo", &iwelbo_autograd);
  m.impl("normalized_weights", &normalized_weights_autograd);
  m.impl("weight_diagnostics", &weight_diagnostics_autograd);
  m.impl("vimco", &vimco_autograd);
  m.impl("dreg", &dreg_autograd);
  m.impl("dreg_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("_vimco_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("vimco_backward", torch::autograd::autogradNotImplementedFallback());
  // Internal pieces: differentiating them (double backward) raises a clear
  // "not implemented" error instead of silently returning no gradient.
  m.impl("_iwelbo_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("logsumexp_stats", torch::autograd::autogradNotImplementedFallback());
  m.impl("iwelbo_backward", torch::autograd::autogradNotImplementedFallback());
}

} // namespace iwae_fused
