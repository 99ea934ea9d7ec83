"""What torch.compile traces in place of the Python entry points of ops.py.

An entry point calls its operator at once and looks at its arguments only if
the dispatcher refuses them (ops.py, _args.py): nothing is paid per call for
tensor arguments. Under torch.compile a refusal cannot be caught (it surfaces
as a compiler error), so each entry point gets a stand-in here
(torch.compiler.substitute_in_graph) that checks the argument types and turns
number operands into 0-dim tensors first. This runs while the graph is
traced, once per compilation: the compiled graph holds only the operator.
The stand-ins have the entry points' signatures and results.
"""

import torch

from iwae_fused import _args, ops

_substitute = torch.compiler.substitute_in_graph


@_substitute(ops.iwelbo)
def iwelbo(log_p, log_q=None, dim=0, keepdim=False, alpha=0.0):
    log_p, log_q = _args.operands("iwelbo", log_p, log_q, True)
    _args.check("iwelbo", ops._iwelbo_args(dim, keepdim, alpha))
    return ops._iwelbo(log_p, log_q, dim, keepdim, alpha)


@_substitute(ops.normalized_weights)
def normalized_weights(log_p, log_q=None, dim=0):
    log_p, log_q = _args.operands("normalized_weights", log_p, log_q, True)
    _args.check("normalized_weights", ops._dim_args(dim))
    return ops._normalized_weights(log_p, log_q, dim)


@_substitute(ops.weight_diagnostics)
def weight_diagnostics(log_p, log_q=None, dim=0):
    log_p, log_q = _args.operands("weight_diagnostics", log_p, log_q, True)
    _args.check("weight_diagnostics", ops._dim_args(dim))
    return ops._weight_diagnostics(log_p, log_q, dim)


@_substitute(ops.effective_sample_size)
def effective_sample_size(log_p, log_q=None, dim=0):
    log_p, log_q = _args.operands("effective_sample_size", log_p, log_q, True)
    _args.check("effective_sample_size", ops._dim_args(dim))
    return ops._weight_diagnostics(log_p, log_q, dim)[0]


@_substitute(ops.vimco)
def vimco(log_p, log_q, dim=0, keepdim=False):
    log_p, log_q = _args.operands("vimco", log_p, log_q, False)
    _args.check("vimco", ops._vimco_args(dim, keepdim))
    return ops._vimco(log_p, log_q, dim, keepdim)


@_substitute(ops.dreg)
def dreg(log_p, log_q, z, dim=0, z_weight="dreg"):
    log_p, log_q = _args.operands("dreg", log_p, log_q, False)
    _args.check("dreg", ops._dreg_args(z, dim, z_weight))
    return ops._dreg(log_p, log_q, z, dim, z_weight)
