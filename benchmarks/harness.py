"""Timing machinery shared by the benchmark script and the pytest-benchmark
suite: contenders, call forms, interleaved medians, bytes moved, copy
bandwidth, and the machine's load."""

import math
import os
import statistics
import time
import types
from dataclasses import dataclass

import torch

import iwae_fused
from iwae_fused import reference


def eager_iwelbo(log_p, log_q, dim):
    """What users write today: torch.logsumexp(log_w, dim) - log K, with
    log_w = log_p - log_q, or log_p itself when log_q is None (the log-weights
    already formed)."""
    log_w = log_p if log_q is None else log_p - log_q
    return torch.logsumexp(log_w, dim) - math.log(log_p.shape[dim])


def _renyi_reference(log_p, log_q, dim):
    return reference.iwelbo(log_p, log_q, dim, alpha=0.5)


# The two ways users call the ops: "w" with the log-weights already formed
# (iwelbo(log_w), one input), "pq" with log_p and log_q (two inputs).
FORMS = {"w": "iwelbo(log_w)", "pq": "iwelbo(log_p, log_q)"}

# Each op: the fused call, its pure-PyTorch reference (the "eager" contender,
# and what torch.compile compiles), whether it has a backward, and the call
# forms it has (VIMCO and DReG need log_q itself).
OPS = {
    "iwelbo": dict(
        fused=lambda p, q, d: iwae_fused.iwelbo(p, q, d),
        reference=eager_iwelbo,
        grad=True,
        forms=("w", "pq"),
    ),
    "renyi": dict(  # the VR bound at alpha = 0.5
        fused=lambda p, q, d: iwae_fused.iwelbo(p, q, d, alpha=0.5),
        reference=_renyi_reference,
        grad=True,
        forms=("w", "pq"),
    ),
    "vimco": dict(  # value and the estimator's gradients
        fused=lambda p, q, d: iwae_fused.vimco(p, q, d),
        reference=reference.vimco,
        grad=True,
        forms=("pq",),
    ),
    # DReG with z = log_p itself (log_p an identity of the samples), so the
    # backward's z-path product is cheap and the bound's own cost shows.
    "dreg": dict(
        fused=lambda p, q, d: iwae_fused.dreg(p, q, p, d),
        reference=lambda p, q, d: reference.dreg(p, q, p, d),
        grad=True,
        forms=("pq",),
    ),
    "ess": dict(
        fused=lambda p, q, d: iwae_fused.effective_sample_size(p, q, d),
        reference=reference.effective_sample_size,
        grad=False,
        forms=("w", "pq"),
    ),
}

def _fresh_function(fn):
    """A copy of fn under a code object of its own. Dynamo keeps its compiled
    graphs on the code object, so every copy starts with an empty cache, as
    the one torch.compile of a user's script does: no graphs of other shapes
    to skip, no recompile limit to reach."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def compiled_reference(op, replayable=False):
    """torch.compile(reference, dynamic=False) of the op, with its own cache.
    The replayable variant (for the bwd mode's retain_graph replay) compiles
    without donated buffers, which a backward run twice would find freed."""
    compiled = torch.compile(_fresh_function(OPS[op]["reference"]), dynamic=False)
    if not replayable:
        return compiled

    def replay(*args):
        with torch._functorch.config.patch(donated_buffer=False):
            return compiled(*args)

    return replay


def contenders(op="iwelbo", compile=True, replayable=False):
    """name -> fn(log_p, log_q, dim) for the op: iwae_fused, eager, compile.

    Call once per shape and call form: the compile contender is a fresh
    torch.compile of the reference (its first call compiles)."""
    out = {"iwae_fused": OPS[op]["fused"], "eager": OPS[op]["reference"]}
    if compile:
        out["compile"] = compiled_reference(op, replayable)
    return out


@dataclass
class Case:
    shape: tuple
    dim: int
    label: str

    @property
    def numel(self):
        return math.prod(self.shape)

    @property
    def outputs(self):
        return self.numel // self.shape[self.dim]


def parse_cases(text):
    """'50x128:0,64x65536:1' -> cases."""
    cases = []
    for item in text.split(","):
        dims, _, dim = item.partition(":")
        shape = tuple(int(s) for s in dims.lower().split("x"))
        cases.append(Case(shape, int(dim or 0), item))
    return cases


def bytes_moved(case, mode, itemsize, form="pq"):
    """Bytes that must cross memory: inputs read once, outputs written once.

    fwd: read the inputs (log_w; or log_p and log_q), write the bound. bwd:
    read the inputs, write one gradient per input. fwd+bwd: both, the floor
    of a training step.
    """
    n_in = 1 if form == "w" else 2
    fwd = (n_in * case.numel + case.outputs) * itemsize
    bwd = 2 * n_in * case.numel * itemsize
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def input_bytes(case, itemsize, form="pq"):
    """Bytes of the inputs: what any forward must read at least once."""
    return (1 if form == "w" else 2) * case.numel * itemsize


class Timer:
    """Wall time on CPU; CUDA events on GPU (synchronising around a batch).

    clock="cpu" times CPU work instead (time.process_time: user + system
    time of every thread of the process): with one thread it is what the
    wall time would be on an idle machine, and barely moves when other
    processes share the cores, so it is the clock to compare builds with on
    a busy machine. With more threads it sums their time."""

    def __init__(self, device, clock="wall"):
        self.cuda = torch.device(device).type == "cuda"
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    def batch(self, fn, n):
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        t0 = self.clock()
        for _ in range(n):
            fn()
        return (self.clock() - t0) / n


def make_step(fn, case, mode, dtype, device, seed=0, scale=1.0, form="pq"):
    """A zero-argument callable running one forward, backward or training step.

    fwd: the forward under no_grad. fwdbwd: the training step as users run
    it: gradients set to None (as zero_grad does), a fresh graph, then
    f(x).backward(g). bwd: the backward alone, replayed on one graph.

    form "w" calls fn(log_w, None, dim) with one input, "pq" fn(log_p, log_q,
    dim). The inputs are standard normal times `scale`: at scale 1 every
    weight is within ~10 nats of its slice's max; from ~30 on many are more
    than 87 below it, denormal in float32 (benchmarks/NOTES.md CPU 13)."""
    gen = torch.Generator().manual_seed(seed)
    p = (torch.randn(case.shape, generator=gen) * scale).to(dtype).to(device)
    q = (torch.randn(case.shape, generator=gen) * scale).to(dtype).to(device)
    if form == "w":
        q = None
    inputs = [t for t in (p, q) if t is not None]
    if mode == "fwd":

        def step():
            with torch.no_grad():
                return fn(p, q, case.dim)

        return step
    for t in inputs:
        t.requires_grad_()
    with torch.no_grad():  # the incoming gradient's shape, from the eager reference
        shape = eager_iwelbo(p, q, case.dim).shape
    g = torch.randn(shape, generator=gen).to(dtype).to(device)
    if mode == "bwd":
        out = fn(p, q, case.dim)  # one graph, backward replayed on it

        def step():
            for t in inputs:
                t.grad = None
            out.backward(g, retain_graph=True)

        return step

    def step():
        # Gradients set to None first, as zero_grad(set_to_none=True) does, so
        # every contender writes fresh gradients instead of accumulating.
        for t in inputs:
            t.grad = None
        fn(p, q, case.dim).backward(g)

    return step


@dataclass
class Timing:
    """Seconds per call of one contender: the median of its batches, and
    their spread (interquartile range over the median)."""

    median: float
    spread: float
    samples: list


def interleaved_timings(steps, timer, repeats, target_s=0.05):
    """Timing per contender: runs of the steps interleaved (rotating their
    order), so that drift and warm caches hit all alike. Each timed batch
    follows one untimed call of the same contender: the memory the previous
    contender freed (glibc's heap, trimmed or not) otherwise decides whether
    the first call of a batch page-faults on fresh memory, which a user's loop
    of one contender never does (benchmarks/NOTES.md CPU 17)."""
    names = list(steps)
    counts = {}
    for name in names:  # warm up (and compile), then size the batches
        for _ in range(3):
            steps[name]()
        t = timer.batch(steps[name], 1)
        counts[name] = max(1, min(10_000, int(target_s / max(t, 1e-7))))
    samples = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            steps[name]()
            samples[name].append(timer.batch(steps[name], counts[name]))
    out = {}
    for name, v in samples.items():
        med = statistics.median(v)
        q = statistics.quantiles(v, n=4) if len(v) >= 2 else [med, med, med]
        out[name] = Timing(med, (q[2] - q[0]) / med if med > 0 else 0.0, v)
    return out


def interleaved_medians(steps, timer, repeats, target_s=0.05):
    """Median seconds per call of each step (interleaved_timings)."""
    return {n: t.median for n, t in interleaved_timings(steps, timer, repeats, target_s).items()}


# The cheapest training step there is, per call form: one op with one
# autograd node on two elements (x.sum(0) of log_w; torch.dot(log_p, log_q),
# one node with two gradients), timed as make_step times a step. It is what
# Python, dispatch, autograd and the allocator cost any step on this machine,
# so no op's step can take less: a memory floor below this cost cannot be met
# within a small factor however fast the kernels are.
ONE_OP_STEP = {
    "w": lambda p, q, dim: p.sum(dim),
    "pq": lambda p, q, dim: torch.dot(p, q),
}


def one_op_step_seconds(form, dtype, device, timer, repeats):
    """Median seconds of ONE_OP_STEP[form]'s training step on two elements."""
    (case,) = parse_cases("2:0")
    step = make_step(ONE_OP_STEP[form], case, "fwdbwd", dtype, device, form=form)
    return interleaved_medians({"one op": step}, timer, repeats)["one op"]


def load_average():
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def copy_bandwidth(device, timer, nbytes=1 << 28, repeats=7):
    """Bytes per second of dst.copy_(src): read + write of nbytes each."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    med = interleaved_medians({"copy": lambda: dst.copy_(src)}, timer, repeats, 0.2)
    return 2 * nbytes / med["copy"]
