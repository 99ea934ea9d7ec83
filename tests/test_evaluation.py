"""Large-K evaluation: the mergeable state, chunked and distributed
estimates, and a model whose log p(x) is known in closed form."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

import iwae_fused
from iwae_fused import IwelboState, estimate_log_likelihood, iwelbo_state

from conftest import DTYPES, close

ops = torch.ops.iwae_fused


def chunks_of(x, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(x[i : i + n])
        i += n
    return out


def serve(x):
    """A log_weight_fn that hands out consecutive rows of x, and records."""
    calls = []

    def fn(n):
        assert not torch.is_grad_enabled()
        start = sum(calls)
        calls.append(n)
        return x[start : start + n]

    return fn, calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [1, 7, 250, 1000, 1001, 4096])
def test_chunked_state_equals_one_shot(dtype, chunk, device):
    gen = torch.Generator().manual_seed(chunk)
    x = (torch.randn(1000, 9, generator=gen, dtype=torch.float64) * 4).to(dtype).to(device)
    state = IwelboState.empty([9], device=device)
    for part in torch.split(x, chunk):
        state = state.merge(iwelbo_state(part))
    assert state.count == 1000
    close(state.finalize(), iwae_fused.iwelbo(x.double()), torch.float64 if dtype == torch.float64 else torch.float32)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=3, max_size=3),
    seed=st.integers(0, 2**31 - 1),
    empty_at=st.sampled_from([None, 0, 1, 2]),
)
def test_merge_is_associative_commutative_with_identity(sizes, seed, empty_at):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), 5, generator=gen, dtype=torch.float64) * 10
    parts = chunks_of(x, sizes)
    if empty_at is not None:  # an all -inf chunk: the identity
        parts[empty_at] = torch.full_like(parts[empty_at], -math.inf)
    a, b, c = (iwelbo_state(p) for p in parts)
    left = a.merge(b).merge(c).finalize()
    right = a.merge(b.merge(c)).finalize()
    swapped = c.merge(a).merge(b).finalize()
    torch.testing.assert_close(left, right)
    torch.testing.assert_close(left, swapped)
    torch.testing.assert_close(left, iwae_fused.iwelbo(torch.cat(parts)))
    e = IwelboState.empty([5])
    torch.testing.assert_close(a.merge(e).finalize(), a.finalize())
    inf_chunk = iwelbo_state(torch.full((4, 5), -math.inf, dtype=torch.float64))
    merged = a.merge(inf_chunk)
    assert torch.equal(merged.shift, a.shift) and torch.equal(merged.log_sum, a.log_sum)


def test_state_of_all_neg_inf_slice_and_nan():
    x = torch.randn(6, 3, dtype=torch.float64)
    x[:, 0] = -math.inf
    x[2, 2] = math.nan
    s = iwelbo_state(x)
    assert s.log_sum[0].item() == -math.inf
    assert math.isnan(s.log_sum[2].item())
    out = s.merge(iwelbo_state(torch.randn(4, 3, dtype=torch.float64))).finalize()
    assert math.isfinite(out[0].item()) and math.isfinite(out[1].item())
    assert math.isnan(out[2].item())


def test_state_errors():
    with pytest.raises(ValueError, match="cannot be merged"):
        IwelboState.empty([3]).merge(IwelboState.empty([4]))
    with pytest.raises(ValueError, match="holds no samples"):
        IwelboState.empty([3]).finalize()
    with pytest.raises(ValueError, match="sample dimension dim=0 has size 0"):
        iwelbo_state(torch.zeros(0, 3))


def test_opcheck_logsumexp_stats(device):
    g = torch.Generator().manual_seed(0)
    for shape, dim in [((30, 4), 0), ((4, 30), 1), ((3, 8, 5), -2)]:
        x = torch.randn(shape, generator=g).to(device)
        torch.library.opcheck(ops.logsumexp_stats.default, (x, None, dim))
        torch.library.opcheck(ops.logsumexp_stats.default, (x, x.flip(0), dim))


@pytest.mark.parametrize("num,chunk", [(1000, 128), (1000, 1000), (1000, None), (999, 333), (5, 2)])
def test_estimate_calls_in_bounded_chunks_and_matches_one_shot(num, chunk):
    x = torch.randn(num, 4, dtype=torch.float64) * 3
    fn, calls = serve(x)
    est = estimate_log_likelihood(fn, num, chunk_size=chunk)
    assert sum(calls) == num and max(calls) <= (chunk or num)
    assert all(c == (chunk or num) for c in calls[:-1])
    assert est.dtype == torch.float64 and est.shape == (4,)
    close(est, iwae_fused.iwelbo(x), torch.float64)


def test_estimate_errors():
    fn, _ = serve(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        estimate_log_likelihood(fn, 0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        estimate_log_likelihood(fn, 10, chunk_size=0)
    with pytest.raises(ValueError, match=r"log_weight_fn\(4\) must return log-weights of shape \[4, \*batch\]"):
        estimate_log_likelihood(lambda n: torch.zeros(n + 1, 2), 8, chunk_size=4)
    with pytest.raises(RuntimeError, match="not initialized"):
        estimate_log_likelihood(fn, 10, group=object())


def test_progress_bar_off_without_tty_and_on_when_asked(capsys):
    pytest.importorskip("tqdm")  # the bar is optional: no tqdm, no bar
    fn, _ = serve(torch.zeros(100, 2))
    estimate_log_likelihood(fn, 100, chunk_size=10)
    assert "log-likelihood" not in capsys.readouterr().err
    fn, _ = serve(torch.zeros(100, 2))
    estimate_log_likelihood(fn, 100, chunk_size=10, progress=True)
    assert "log-likelihood" in capsys.readouterr().err


class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D): p(x) = N(b, W W^T + s^2 I).

    The proposal q(z | x) is the exact posterior with its mean shifted by 0.5
    in every coordinate, so the bound is ~1.9 nats loose at K = 1 and
    tightens with K.
    """

    def __init__(self, d=3, D=5, s=0.7, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.s = s
        self.d, self.D = d, D
        cov_post = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / s**2)
        self.cov_q = cov_post
        self.cov_post = cov_post

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def log_weight_fn(self, x, seed):
        mean_post = (x - self.b) @ self.W @ self.cov_post.T / self.s**2  # [B, d]
        q = torch.distributions.MultivariateNormal(mean_post + 0.5, self.cov_q)
        prior = torch.distributions.Normal(torch.zeros(self.d, dtype=torch.float64), 1.0)
        g = torch.Generator().manual_seed(seed)

        def fn(n):
            eps = torch.randn(n, *mean_post.shape, generator=g, dtype=torch.float64)
            z = q.loc + eps @ torch.linalg.cholesky(self.cov_q).T  # [n, B, d]
            lik = torch.distributions.Normal(z @ self.W.T + self.b, self.s)
            return lik.log_prob(x).sum(-1) + prior.log_prob(z).sum(-1) - q.log_prob(z)

        return fn


def test_linear_gaussian_estimates_rise_to_exact_log_likelihood():
    model = LinearGaussian()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, model.d, generator=g, dtype=torch.float64)
    x = z @ model.W.T + model.b + model.s * torch.randn(40, model.D, generator=g, dtype=torch.float64)
    exact = model.log_px(x)
    gaps = {}
    for K in [1, 10, 100, 1000, 5000]:
        est = estimate_log_likelihood(model.log_weight_fn(x, seed=K), K, chunk_size=512)
        gaps[K] = (est - exact).mean().item()
        # Below the truth up to Monte Carlo noise (Burda et al., Theorem 1).
        assert gaps[K] < 0.03, gaps
    assert gaps[1] < gaps[10] < gaps[100] < gaps[1000] < 0, gaps
    assert gaps[1] < -1.0, gaps  # the test can fail: K = 1 is far from exact
    assert abs(gaps[5000]) < 0.03, gaps


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world, port, out_dir, num, chunk):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        full = torch.randn(num, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        shares = [num // world + (1 if r < num % world else 0) for r in range(world)]
        fn, calls = serve(full[sum(shares[:rank]) :])
        est = estimate_log_likelihood(fn, num, chunk_size=chunk, group=dist.group.WORLD)
        torch.save({"est": est, "calls": calls}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_agree_with_one_process_over_all_samples(tmp_path):
    num, chunk, world = 1001, 100, 2
    mp.spawn(
        _distributed_worker, args=(world, _free_port(), str(tmp_path), num, chunk),
        nprocs=world, join=True,
    )
    full = torch.randn(num, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = iwae_fused.iwelbo(full)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert [sum(r["calls"]) for r in results] == [501, 500]
    for r in results:
        close(r["est"], expected, torch.float64)
    assert torch.equal(results[0]["est"], results[1]["est"])
