"""Timing machinery shared by the benchmark script and the pytest-benchmark
suite: contenders, interleaved medians, bytes moved, copy bandwidth."""

import math
import statistics
import time
import types
from dataclasses import dataclass

import torch

import iwae_fused
from iwae_fused import reference


def eager_iwelbo(log_p, log_q, dim):
    """What users write today."""
    return torch.logsumexp(log_p - log_q, dim) - math.log(log_p.shape[dim])


def _renyi_reference(log_p, log_q, dim):
    return reference.iwelbo(log_p, log_q, dim, alpha=0.5)


# Each op: the fused call, its pure-PyTorch reference (the "eager" contender,
# and what torch.compile compiles), and whether it has a backward.
OPS = {
    "iwelbo": dict(
        fused=lambda p, q, d: iwae_fused.iwelbo(p, q, d),
        reference=eager_iwelbo,
        grad=True,
    ),
    "renyi": dict(  # the VR bound at alpha = 0.5
        fused=lambda p, q, d: iwae_fused.iwelbo(p, q, d, alpha=0.5),
        reference=_renyi_reference,
        grad=True,
    ),
    "vimco": dict(  # value and the estimator's gradients
        fused=lambda p, q, d: iwae_fused.vimco(p, q, d),
        reference=reference.vimco,
        grad=True,
    ),
    # DReG with z = log_p itself (log_p an identity of the samples), so the
    # backward's z-path product is cheap and the bound's own cost shows.
    "dreg": dict(
        fused=lambda p, q, d: iwae_fused.dreg(p, q, p, d),
        reference=lambda p, q, d: reference.dreg(p, q, p, d),
        grad=True,
    ),
    "ess": dict(
        fused=lambda p, q, d: iwae_fused.effective_sample_size(p, q, d),
        reference=reference.effective_sample_size,
        grad=False,
    ),
}

_compiled = {}


def _compiled_reference(op, replayable):
    """torch.compile of the op's reference, shapes specialised. The replayable
    variant (for the bwd mode's retain_graph replay) compiles a copy of the
    function under its own code object without donated buffers."""
    key = (op, replayable)
    if key not in _compiled:
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            # Up to three graphs per shape (no_grad forward, the forward
            # with grad, and make_step's no_grad probe of inputs that require
            # grad): a suite of 27 shapes (the short preset) passes 64, after
            # which dynamo would silently run the eager function instead.
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 1024))
        fn = OPS[op]["reference"]
        if replayable:
            fn = types.FunctionType(
                fn.__code__.replace(), fn.__globals__, fn.__name__ + "_replayable"
            )
        compiled = torch.compile(fn, dynamic=False)
        if replayable:
            inner = compiled

            def compiled(*args):
                with torch._functorch.config.patch(donated_buffer=False):
                    return inner(*args)

        _compiled[key] = compiled
    return _compiled[key]


def contenders(op="iwelbo", compile=True, replayable=False):
    """name -> fn(log_p, log_q, dim) for the op: iwae_fused, eager, compile."""
    out = {"iwae_fused": OPS[op]["fused"], "eager": OPS[op]["reference"]}
    if compile:
        c = None

        def compiled(p, q, d):
            nonlocal c
            if c is None:
                c = _compiled_reference(op, replayable)
            return c(p, q, d)

        out["compile"] = compiled
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


def bytes_moved(case, mode, itemsize):
    """Bytes that must cross memory: inputs read once, outputs written once.

    fwd: read log_p and log_q, write the bound. bwd: read log_p and log_q,
    write both gradients. fwd+bwd: both.
    """
    fwd = (2 * case.numel + case.outputs) * itemsize
    bwd = 4 * case.numel * itemsize
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def input_bytes(case, itemsize):
    """Bytes of log_p and log_q: what any forward must read at least once."""
    return 2 * case.numel * itemsize


class Timer:
    """Wall time on CPU; CUDA events on GPU (synchronising around a batch)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

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
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n


def make_step(fn, case, mode, dtype, device, seed=0, scale=1.0):
    """A zero-argument callable running one forward (or forward+backward).

    log_p and log_q are standard normal times `scale`: at scale 1 every weight
    is within ~10 nats of its slice's max; from ~30 on many are more than 87
    below it, denormal in float32 (benchmarks/NOTES.md CPU 13)."""
    gen = torch.Generator().manual_seed(seed)
    p = (torch.randn(case.shape, generator=gen) * scale).to(dtype).to(device)
    q = (torch.randn(case.shape, generator=gen) * scale).to(dtype).to(device)
    if mode == "fwd":

        def step():
            with torch.no_grad():
                return fn(p, q, case.dim)

        return step
    p.requires_grad_()
    q.requires_grad_()
    with torch.no_grad():
        g = torch.randn_like(fn(p, q, case.dim))
    if mode == "bwd":
        out = fn(p, q, case.dim)  # one graph, backward replayed on it

        def step():
            p.grad = None
            q.grad = None
            out.backward(g, retain_graph=True)

        return step

    def step():
        # Gradients set to None first, as zero_grad(set_to_none=True) does, so
        # every contender writes fresh gradients instead of accumulating.
        p.grad = None
        q.grad = None
        fn(p, q, case.dim).backward(g)

    return step


def interleaved_medians(steps, timer, repeats, target_s=0.05):
    """Median seconds per call of each step, runs of the steps interleaved
    (rotating their order) so drift and warm caches hit all alike."""
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
            samples[name].append(timer.batch(steps[name], counts[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def copy_bandwidth(device, timer, nbytes=1 << 28, repeats=7):
    """Bytes per second of dst.copy_(src): read + write of nbytes each."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    med = interleaved_medians({"copy": lambda: dst.copy_(src)}, timer, repeats, 0.2)
    return 2 * nbytes / med["copy"]
