"""Detaching a guide's parameters for DReG/STL, and the check that nothing
escaped.

DReG and STL need the guide's log-density log q(z; phi) with phi held fixed
and z = z(phi, eps) keeping its path. IWAE_ELBO gets it by replaying the guide
on its own draws inside detached_params(), which intercepts every parameter
Pyro hands out, whichever way Pyro hands it out (the global param store or
module_local_params; see _DetachParams). What no Pyro message carries cannot
be intercepted there, so check_detached() walks the replayed log-density's
autograd graph and raises, naming the tensor, if anything but the samples
still brings gradient into it.
"""

from contextlib import contextmanager
import warnings

import torch

import pyro
from pyro.poutine.messenger import Messenger

# The key under which the detached replay leaves a site's log-density: computed
# while the parameters are detached, since a distribution may read them only
# then (a flow calls its network in log_prob) or hold a Parameter itself.
LOG_PROB = "iwae_fused_log_prob"


class _DetachParams(Messenger):
    """While active, every parameter Pyro hands out stops carrying gradient.

    Pyro hands a parameter out in a ``param`` message in two ways. Where the
    caller uses the message's value (``pyro.param``; a PyroParam of a
    PyroModule, in either parameter mode), the value is replaced by its
    detached self. Where the caller discards the value and uses the object it
    already holds (a PyroModule's plain ``nn.Parameter`` and the parameters of
    its ``nn.Module`` attributes, whose messages are stand-ins under
    ``module_local_params``; ``pyro.module``, which keeps the module's own
    Parameter objects), replacing the value would change nothing, so that leaf
    itself stops requiring grad until restore(). The object stays the same, so
    ``pyro.module(..., update_module_params=True)`` finds nothing to install.
    A leaf that already does not require grad (frozen by an enclosing pass, or
    read twice) is left alone, which makes nesting and shared modules safe."""

    def __init__(self):
        super().__init__()
        self.frozen = []

    def _pyro_post_param(self, msg):
        value = msg["value"]
        if not (isinstance(value, torch.Tensor) and value.requires_grad):
            return
        if value.is_leaf:
            value.requires_grad_(False)
            self.frozen.append(value)
        else:
            msg["value"] = value.detach()

    def restore(self):
        while self.frozen:
            self.frozen.pop().requires_grad_(True)


@contextmanager
def detached_params():
    # The global param store's leaves are frozen up front as well: that also
    # covers a store parameter the guide reads without a message (one read
    # by pyro.param outside the guide and closed over).
    store = [
        p for _, p in pyro.get_param_store().named_parameters() if p.is_leaf and p.requires_grad
    ]
    detach = _DetachParams()
    for p in store:
        p.requires_grad_(False)
    try:
        with detach, warnings.catch_warnings():
            # pyro.module warns about each frozen Parameter it does not register
            warnings.filterwarnings("ignore", message=".*was not registered in the param store")
            yield
    finally:
        detach.restore()
        for p in store:
            p.requires_grad_(True)


def escaped_tensors(log_q, weights):
    """The tensors requiring grad that log_q reaches other than through the
    samples (the _ScaleGrad outputs the replay was given): the leaves of
    parameters that were not detached. Walks only the replay's own graph
    (frozen parameters and the samples end it), a few nodes per site."""
    if not (isinstance(log_q, torch.Tensor) and log_q.requires_grad):
        return []
    stop = {w.node for w in weights if w.node is not None}
    seen, todo, found = set(), [log_q.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if leaf is not None:
            found.append(leaf)
            continue
        todo.extend(f for f, _ in node.next_functions)
    return found


def _describe(t, guide):
    name = pyro.get_param_store().param_name(t)
    if name is not None:
        return f"the param store's '{name}'"
    if isinstance(guide, torch.nn.Module):
        for n, p in guide.named_parameters(remove_duplicate=False):
            if p is t:
                return f"the guide's parameter '{n}'"
    return f"a tensor of shape {list(t.shape)} ({t.dtype}) that requires grad"


def check_detached(log_q, weights, guide_trace, guide):
    """Raise if the detached replay's log_q still depends on a tensor that
    requires grad other than through the samples: DReG/STL would then keep
    part of the score term, a different estimator."""
    leaves = escaped_tensors(log_q, weights)
    if not leaves:
        return
    where = [s["name"] for s in guide_trace.nodes.values()
             if escaped_tensors(s.get(LOG_PROB), weights)]
    site = f"of site {where[0]!r} " if where else ""
    raise ValueError(
        f"IWAE_ELBO: DReG/STL re-evaluate the guide's log-density with its parameters "
        f"detached, but the log-density {site}still depends on "
        f"{_describe(leaves[0], guide)}, which Pyro did not hand out as a parameter (a "
        f"tensor the guide closes over or computes outside, or a parameter a module reads "
        f"from its own cache, e.g. nn.LSTM's flat weights under module_local_params). "
        f"Read it through pyro.param, a PyroModule attribute or pyro.module, or detach it"
        + (f" ({len(leaves)} such tensors in all)" if len(leaves) > 1 else ""))
