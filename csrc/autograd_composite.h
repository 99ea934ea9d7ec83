// The differentiable path of iwelbo: forward-mode AD, double backward and
// torch.func transforms (see the note in autograd.cpp for why it exists and
// when it runs). Plain ATen ops only, so every order and every composition
// of transforms comes from ATen's own autograd, forward AD and batching rules.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace iwae_fused {

// A grad/jvp-type torch.func transform is processing this call.
bool under_functorch_transform();

// The tensor carries a forward-mode tangent (at the only non-functorch level).
bool has_tangent(const at::Tensor& t);
bool has_tangent(const std::optional<at::Tensor>& t);

// iwelbo(log_p, log_q, dim, keepdim, alpha) as differentiable ATen ops, with
// the op's -inf rules and argument errors; value equal to the kernel's to rounding.
at::Tensor iwelbo_composite(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q, int64_t dim,
    bool keepdim, double alpha);

// softmax((1 - alpha) log w) along dim, full broadcast shape ([1] for 0-dim
// inputs), differentiable; 0 on an all -inf slice, 1/K (a constant) at alpha = 1.
at::Tensor weights_composite(
    const at::Tensor& log_p, const std::optional<at::Tensor>& log_q, int64_t dim,
    double alpha);

} // namespace iwae_fused
