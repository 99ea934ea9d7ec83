"""Argument types of the Python entry points: numbers taken as log_p - log_q
takes them, and a clear TypeError for anything else.

The entry points in ops.py call the operator directly, so a call with tensor
arguments pays nothing here. Only when the dispatcher refuses a call does
after_refusal() run: it raises a TypeError naming the op, the argument, the
type it expects and what it was given, or converts a Python (or NumPy) real
number operand to a 0-dim tensor and hands the operands back for one more try.
Under torch.compile the same checks and conversion run up front instead
(_compiled.py), at trace time, where they cost nothing per call.

A number ``c`` for log_q (or log_p) becomes a 0-dim tensor of the other
operand's dtype and device. The op's dtype promotion then gives what
``log_p - c`` gives: a Python number never promotes a tensor (float16 stays
float16, float32 stays float32), int or float alike. Python bools, which
``log_p - True`` refuses, are refused too (NumPy's bool, which it takes, is
taken). A 0-dim tensor operand is treated as eager treats it: it does not
promote the other operand's dtype (the op's own rule), it may be an integer
tensor (converted like a number), and a CPU 0-dim tensor goes with an
operand on any device.

Python-only APIs (IWAE_ELBO's options, estimate_log_likelihood) check their
arguments up front with the strict kinds ("int" refuses a bool, "real" a
tensor that requires grad); an operator's own arguments use the "op" kinds,
which refuse what the dispatcher refuses and nothing more.
"""

import numbers
import operator

import torch
from torch import Tensor

# What each kind of argument must be, as the message says it.
_EXPECTED = {
    "tensor": "a torch.Tensor",
    "operand": "a torch.Tensor or a real number",
    "optional operand": "a torch.Tensor, a real number or None",
    "int": "an int",
    "bool": "a bool",
    "real": "a real number (float or int)",
    "str": "a str",
    "op int": "an int",
    "op bool": "a bool",
    "op real": "a float",
    "optional int": "an int or None",
    "optional bool": "a bool or None",
}


def describe(x):
    """What was given, short: the type, and the value when it is small."""
    t = type(x)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    if isinstance(x, Tensor):
        return f"a tensor of shape {list(x.shape)} and dtype {x.dtype}"
    if x is None:
        return "None"
    if isinstance(x, (str, bool, numbers.Number)):
        r = repr(x)
        return f"{name} ({r if len(r) <= 40 else r[:37] + '...'})"
    return name  # a container: its type, never its (possibly huge) value


def _is_number(x):
    # Python and NumPy reals; not Python bools, which log_p - True refuses
    # (a NumPy bool it takes, as 0 or 1: so do we).
    if isinstance(x, numbers.Real):
        return not isinstance(x, (Tensor, bool))
    return type(x).__module__ == "numpy" and getattr(x, "shape", None) == () and x.dtype.kind == "b"


def _is_int(x):
    if isinstance(x, bool) or (isinstance(x, Tensor) and x.dtype == torch.bool):
        return False
    try:
        operator.index(x)  # int, NumPy integers, one-element integer tensors
    except TypeError:
        return False
    return not isinstance(x, Tensor) or x.dim() == 0


def _is_real(x):
    if isinstance(x, bool):
        return False
    if isinstance(x, Tensor):  # as torch's own float arguments: 0-dim, no grad
        return x.dim() == 0 and not x.requires_grad and x.dtype != torch.bool
    return isinstance(x, numbers.Real)


# An operator's own int, bool and float arguments: refused here is what the
# dispatcher refuses, so that eager calls and compiled ones (where this check
# runs first) accept the same calls. The dispatcher also takes some values of
# a neighbouring type, as every torch.ops operator does: a bool or a
# one-element tensor for an int, any number or None for a bool, a
# one-element tensor for a float (read with .item(); torch warns when it
# requires grad). Refusing those too would cost every eager call a check.
_NOT_A_NUMBER = (str, bytes, complex, type(None), list, tuple, dict, set)


def _op_int(x):
    return not isinstance(x, (float,) + _NOT_A_NUMBER)


def _op_bool(x):
    return not isinstance(x, (str, bytes, list, tuple, dict, set))


def _op_real(x):
    return not isinstance(x, _NOT_A_NUMBER)


_OK = {
    "op int": _op_int,
    "op bool": _op_bool,
    "op real": _op_real,
    "tensor": lambda x: isinstance(x, Tensor),
    "int": _is_int,
    "bool": lambda x: isinstance(x, bool),
    "real": _is_real,
    "str": lambda x: isinstance(x, str),
    "optional int": lambda x: x is None or _is_int(x),
    "optional bool": lambda x: x is None or isinstance(x, bool),
}


def check(op, args):
    """Raise a TypeError for the first argument of a wrong type; args:
    (name, kind, value) for every argument but the operands."""
    for name, kind, value in args:
        if not _OK[kind](value):
            raise TypeError(f"{op}(): expected {name} to be {_EXPECTED[kind]}, "
                            f"but got {describe(value)}") from None


def _tensor_like(x, other):
    """x (a number or a 0-dim tensor) as a 0-dim tensor of other's dtype and device."""
    if isinstance(x, Tensor):
        if other.dtype.is_floating_point and not x.dtype.is_floating_point:
            return x.to(device=other.device, dtype=other.dtype)
        return x.to(device=other.device)
    if other.dtype.is_floating_point:
        return torch.tensor(x, dtype=other.dtype, device=other.device)
    return torch.tensor(x, device=other.device)  # the op then names other's dtype


def operands(op, log_p, log_q, q_optional=True):
    """(log_p, log_q) with a number operand as a 0-dim tensor, or a TypeError
    naming the operand that is neither a tensor nor a number."""
    q_none = log_q is None and q_optional
    for name, x in (("log_p", log_p), ("log_q", log_q)):
        if not (isinstance(x, Tensor) or _is_number(x) or (name == "log_q" and q_none)):
            kind = ("optional operand" if name == "log_q" and q_optional
                    else "tensor" if name == "log_p" and q_none else "operand")
            raise TypeError(
                f"{op}(): expected {name} to be {_EXPECTED[kind]}, but got {describe(x)}") from None
    if isinstance(log_p, Tensor):
        if _is_number(log_q) or _moves(log_q, log_p):
            log_q = _tensor_like(log_q, log_p)
        elif _moves(log_p, log_q):
            log_p = _tensor_like(log_p, log_q)
        return log_p, log_q
    if isinstance(log_q, Tensor):  # a number minus a tensor
        return _tensor_like(log_p, log_q), log_q
    raise TypeError(f"{op}(): expected log_p to be a torch.Tensor"
                    + (" (or a number, with log_q a tensor)" if not q_none else "")
                    + f", but got {describe(log_p)}" + ("" if q_none else f" and log_q {describe(log_q)}")
                    ) from None


def _moves(q, p):
    # A 0-dim tensor eager would take as it is but the op refuses: an integer
    # or bool one, or a CPU one beside an operand on another device.
    if not (isinstance(q, Tensor) and isinstance(p, Tensor)) or q.dim() != 0:
        return False
    off_device = q.device != p.device and q.device.type == "cpu"
    integer = not q.dtype.is_floating_point and q.dtype != torch.bool  # bool: refused as eager does
    return off_device or (p.dtype.is_floating_point and integer)


def after_refusal(op, log_p, log_q, q_optional, args):
    """Called in an entry point's except block, after the dispatcher refused a
    call. Raises a TypeError for an argument of a wrong type; returns the
    operands converted for one more try when that is what the call needs;
    returns None when the arguments are all of the right types (the original
    error stands)."""
    p, q = operands(op, log_p, log_q, q_optional)
    check(op, args)
    return None if p is log_p and q is log_q else (p, q)
