"""estimate_log_likelihood across processes (torch.distributed, gloo) where the
collectives change the values: special log-weights split between the ranks
(a rank whose share of an example is all -inf, -inf everywhere, +inf and NaN
on one rank, shares 1e4 nats apart), uneven shares, and the diagnostics
(ESS, largest weight, k-hat) gathered by all_gather. Every rank must return
what one process computes from all the samples at once."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import iwae_fused
from iwae_fused import estimate_log_likelihood

NUM, CHUNK, WORLD = 101, 20, 2
SHARES = [NUM // WORLD + (1 if r < NUM % WORLD else 0) for r in range(WORLD)]  # 51, 50


def log_weights():
    """[NUM, 6] float64; rank r draws rows sum(SHARES[:r]) onwards."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM, 6, generator=g, dtype=torch.float64)
    first = slice(0, SHARES[0])
    x[first, 1] = -math.inf  # rank 0 holds nothing of example 1
    x[:, 2] = -math.inf  # example 2: no sample anywhere
    x[NUM - 3, 3] = math.inf  # rank 1 holds a +inf
    x[4, 4] = math.nan  # rank 0 holds a NaN
    x[first, 5] -= 1e4  # example 5: the ranks' shares 1e4 nats apart
    return x


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        rows = log_weights()[sum(SHARES[:rank]):]
        served = []

        def fn(n):
            start = sum(served)
            served.append(n)
            return rows[start:start + n]

        plain = estimate_log_likelihood(fn, NUM, chunk_size=CHUNK, group=dist.group.WORLD)
        served.clear()
        diag = estimate_log_likelihood(fn, NUM, chunk_size=CHUNK, group=dist.group.WORLD,
                                       diagnostics=True)
        torch.save({"plain": plain, "diag": tuple(diag), "served": sum(served)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_special_values_split_between_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    x = log_weights()
    ll = iwae_fused.iwelbo(x)
    ess, top = iwae_fused.weight_diagnostics(x)
    k = iwae_fused.pareto_k(x)
    # what one process gives: example 1 from rank 1's half alone, 2 -inf,
    # 3 +inf, 4 NaN, 5 from rank 1's half (rank 0's weights are e^-1e4 smaller)
    assert ll[2] == -math.inf and ll[3] == math.inf and math.isnan(ll[4])
    torch.testing.assert_close(ll[1], iwae_fused.iwelbo(x[SHARES[0]:, 1]) - math.log(NUM / SHARES[1]))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert [r["served"] for r in results] == SHARES
    for r in results:
        torch.testing.assert_close(r["plain"], ll, rtol=1e-13, atol=1e-13, equal_nan=True)
        got_ll, got_ess, got_top, got_k = r["diag"]
        torch.testing.assert_close(got_ll, ll, rtol=1e-13, atol=1e-13, equal_nan=True)
        torch.testing.assert_close(got_ess, ess, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(got_top, top, rtol=1e-12, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(got_k, k, rtol=0, atol=0, equal_nan=True)
    for a, b in zip(results[0]["diag"], results[1]["diag"]):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())  # every rank the same
