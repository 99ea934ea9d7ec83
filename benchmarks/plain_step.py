"""One row of bench.py's table, the plainest way: the training step as users run
it (grads set to None, a fresh graph, f(x).backward(g)) for iwae_fused, the
eager expression and torch.compile of it, in batches, alternating contenders.

    python benchmarks/plain_step.py 65536 50        # iwelbo(log_w) over dim 1
    python benchmarks/plain_step.py 65536 50 pq     # iwelbo(log_p, log_q)
"""
import math, statistics, sys, time

import torch

import iwae_fused

B, K = int(sys.argv[1]), int(sys.argv[2])
form = sys.argv[3] if len(sys.argv) > 3 else "w"
x = [torch.randn(B, K, requires_grad=True) for _ in range(1 if form == "w" else 2)]
g = torch.randn(B)


def eager(log_p, log_q=None):
    return torch.logsumexp(log_p if log_q is None else log_p - log_q, 1) - math.log(K)


def step(f):
    for t in x:
        t.grad = None
    f(*x).backward(g)


fns = {"iwae_fused": lambda *a: iwae_fused.iwelbo(*a, dim=1), "eager": eager,
       "compile": torch.compile(eager, dynamic=False)}
times = {n: [] for n in fns}
for _ in range(3):
    for f in fns.values():
        step(f)  # warm up, compile
for _ in range(15):
    for n, f in fns.items():
        t0 = time.perf_counter()
        for _ in range(10):
            step(f)
        times[n].append((time.perf_counter() - t0) / 10)
ms = {n: statistics.median(v) * 1e3 for n, v in times.items()}
print(f"[{B}, {K}] over dim 1, {form}, {torch.get_num_threads()} threads: "
      + ", ".join(f"{n} {v:.3f} ms" for n, v in ms.items())
      + f"; vs eager {ms['eager'] / ms['iwae_fused']:.2f}x, vs compile "
      f"{ms['compile'] / ms['iwae_fused']:.2f}x")
