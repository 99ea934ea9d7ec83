"""PSIS: k-hat and smoothed weights against a float64 reference written from
the paper (one example at a time, in numpy, as loo's psis()/gpdfit() do),
recovery of known tail shapes, the special cases, and the streamed and
distributed k-hat with its mergeable top-M state."""

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

import iwae_fused
from iwae_fused import TopState, estimate_log_likelihood, pareto_k, psis_weights, tail_length
from iwae_fused import psis as psis_module

from conftest import close
from test_evaluation import _free_port, serve

# ---- the reference: Vehtari et al. (2024), loo's psis() and gpdfit() ---------


def ref_gpdfit(y):
    """Zhang & Stephens (2009) with the PSIS prior on k; y ascending."""
    n = len(y)
    grid = 30 + int(math.floor(math.sqrt(n)))
    j = np.arange(1, grid + 1, dtype=np.float64)
    ystar = y[int(math.floor(n / 4 + 0.5)) - 1]
    with np.errstate(divide="ignore", invalid="ignore"):  # ystar = 0: NaN, as in loo
        theta = 1 / y[-1] + (1 - np.sqrt(grid / (j - 0.5))) / 3 / ystar
        k_of = np.array([np.mean(np.log1p(-t * y)) for t in theta])
        loglik = n * (np.log(-theta / k_of) - k_of - 1)
        w = np.exp(loglik - loglik.max())
        w /= w.sum()
        theta_hat = np.sum(theta * w)
        k = np.mean(np.log1p(-theta_hat * y))
    sigma = -k / theta_hat
    k = k * n / (n + 10) + 10 * 0.5 / (n + 10)
    return (math.inf if math.isnan(k) else k), sigma


def ref_psis(lw):
    """(log of the smoothed normalized weights, k-hat) of one 1-D slice."""
    lw = np.asarray(lw, dtype=np.float64)
    s = len(lw)
    m = int(math.ceil(min(0.2 * s, 3 * math.sqrt(s))))
    lw = lw - lw.max()
    k = math.inf
    if m >= 5:
        order = np.argsort(lw, kind="stable")
        tail_ids = order[s - m :]
        tail = lw[tail_ids]
        cutoff = lw[order[s - m - 1]]
        if abs(tail.max() - tail.min()) >= np.finfo(np.float64).eps / 100:
            k, sigma = ref_gpdfit(np.exp(tail) - np.exp(cutoff))
            if math.isfinite(k):
                p = (np.arange(1, m + 1) - 0.5) / m
                q = sigma * np.expm1(-k * np.log1p(-p)) / k
                lw[tail_ids] = np.log(q + np.exp(cutoff))
    lw[lw > 0] = 0
    return lw - np.log(np.sum(np.exp(lw))), k


def ref_columns(x):
    """Reference over the columns of a [S, N] tensor: (k [N], weights [S, N])."""
    ks, ws = [], []
    for col in x.double().T.numpy():
        lw, k = ref_psis(col)
        ks.append(k)
        ws.append(np.exp(lw))
    return torch.tensor(ks), torch.tensor(np.stack(ws, 1))


def gpd_log_weights(k, sigma, shape, gen):
    """log w for w ~ GPD(0, sigma, k) by inversion: sigma ((1 - U)^-k - 1) / k."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.log(sigma * torch.expm1(-k * torch.log1p(-u)) / k)


# ---- against the reference ----------------------------------------------------


def test_tail_length_is_the_papers_rule():
    for s in [1, 20, 21, 24, 25, 26, 100, 224, 225, 226, 1000, 5000, 10**6]:
        assert tail_length(s) == math.ceil(min(s / 5, 3 * math.sqrt(s))), s
    assert [tail_length(s) for s in (20, 21, 225, 5000)] == [4, 5, 45, 213]
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        tail_length(0)


@pytest.mark.parametrize("S", [21, 30, 100, 257, 1000, 5000])
def test_k_hat_and_weights_match_reference(S, device):
    gen = torch.Generator().manual_seed(S)
    # Log-weights of a Gaussian proposal against a Student-t target: a mix of
    # light and heavy tails across the examples.
    z = torch.randn(S, 12, generator=gen, dtype=torch.float64)
    scale = torch.linspace(0.3, 3.0, 12, dtype=torch.float64)
    x = torch.distributions.StudentT(3.0).log_prob(z * scale) - torch.distributions.Normal(0, 1).log_prob(z)
    k_ref, w_ref = ref_columns(x)
    k = pareto_k(x.to(device))
    assert k.dtype == torch.float64 and k.shape == (12,)
    torch.testing.assert_close(k.cpu(), k_ref, atol=1e-9, rtol=1e-9)
    w = psis_weights(x.to(device))
    torch.testing.assert_close(w.cpu(), w_ref, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(w.sum(0).cpu(), torch.ones(12, dtype=torch.float64))
    assert (k_ref > 0.7).any() and (k_ref < 0.5).any()  # both regimes covered


def test_gpd_fit_agrees_with_pyro():
    pyro_stats = pytest.importorskip("pyro.ops.stats")
    gen = torch.Generator().manual_seed(3)
    for k_true in (0.2, 0.5, 0.9):
        y = torch.exp(gpd_log_weights(k_true, 1.0, (400,), gen)).sort().values
        k, sigma = psis_module._gpd_fit(y[None])
        k_pyro, sigma_pyro = pyro_stats.fit_generalized_pareto(y)
        assert abs(k.item() - k_pyro) < 1e-9 and abs(sigma.item() - sigma_pyro) < 1e-9


@pytest.mark.parametrize(
    "shape,dim", [((3, 50, 4), 1), ((4, 60), -1), ((40, 2, 3), 0), ((2, 3, 45), 2)]
)
def test_any_dim_and_broadcast(shape, dim):
    gen = torch.Generator().manual_seed(len(shape) + dim)
    log_p = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    qshape = list(shape)
    qshape[0] = 1  # broadcast along the first dim
    log_q = torch.randn(qshape, generator=gen, dtype=torch.float64)
    x = log_p - log_q
    moved = torch.movedim(x, dim, 0).reshape(x.shape[dim], -1)
    k_ref, w_ref = ref_columns(moved)
    out_shape = list(x.shape)
    del out_shape[dim]
    torch.testing.assert_close(pareto_k(log_p, log_q, dim), k_ref.reshape(out_shape), atol=1e-9, rtol=1e-9)
    w = psis_weights(log_p, log_q, dim)
    assert w.shape == x.shape and w.is_contiguous()
    w_moved = torch.movedim(w, dim, 0).reshape(x.shape[dim], -1)
    torch.testing.assert_close(w_moved, w_ref, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_fit_in_float64(dtype):
    x = (torch.randn(500, 6, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    k_ref, w_ref = ref_columns(x.double())
    torch.testing.assert_close(pareto_k(x), k_ref, atol=1e-9, rtol=1e-9)
    w = psis_weights(x)
    assert w.dtype == dtype
    close(w, w_ref, dtype)


# ---- known tail shapes ---------------------------------------------------------


@pytest.mark.parametrize("k_true", [0.2, 0.5, 0.9])
def test_k_hat_recovers_the_tail_index_of_generalized_pareto_weights(k_true):
    # S = 40000 gives a tail of M = 600 exceedances, themselves GPD with shape
    # k_true; the fit's standard error is about (1 + k) / sqrt(M) <= 0.08 per
    # example and the prior pulls by 10/(M+10) * (0.5 - k) <= 0.007. The mean
    # over 16 examples has a standard error <= 0.02: 0.06 is three of them.
    gen = torch.Generator().manual_seed(int(k_true * 10))
    x = gpd_log_weights(k_true, 2.0, (40000, 16), gen)
    k = pareto_k(x)
    assert abs(k.mean().item() - k_true) < 0.06, k
    assert (k - k_true).abs().max().item() < 0.3, k


@pytest.mark.parametrize("s", [0.5, 0.7, 0.8])
def test_k_hat_of_a_too_narrow_gaussian_proposal(s):
    # p = N(0, 1), q = N(0, s^2), s < 1: w = p/q = C exp(z^2 (1/s^2 - 1) / 2)
    # with z ~ q has P(w > t) ~ t^(-1/(1 - s^2)) up to a slowly varying factor,
    # so the tail index is k = 1 - s^2 (0.75, 0.51, 0.36). That factor biases
    # k-hat down by a few hundredths at M = 600, and the mean of 16 examples
    # has a standard error <= 0.022: tolerance 0.1.
    gen = torch.Generator().manual_seed(int(s * 10))
    z = torch.randn(40000, 16, generator=gen, dtype=torch.float64) * s
    log_w = torch.distributions.Normal(0, 1).log_prob(z) - torch.distributions.Normal(0, s).log_prob(z)
    k = pareto_k(log_w)
    assert abs(k.mean().item() - (1 - s * s)) < 0.1, k


# ---- special cases -------------------------------------------------------------


def test_too_few_samples_give_inf_and_raw_weights():
    x = torch.randn(20, 3, dtype=torch.float64)
    assert torch.equal(pareto_k(x), torch.full((3,), math.inf, dtype=torch.float64))
    torch.testing.assert_close(psis_weights(x), iwae_fused.normalized_weights(x))
    assert torch.isfinite(pareto_k(torch.randn(21, 3, dtype=torch.float64))).all()
    assert pareto_k(torch.tensor(0.5)).item() == math.inf  # a 0-d input: one sample
    assert psis_weights(torch.tensor(0.5)).item() == 1.0


def test_all_neg_inf_constant_tied_nan_and_posinf_slices():
    x = torch.randn(100, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[:, 0] = -math.inf  # no weights at all
    x[:, 1] = 1.5  # constant: no tail
    x[:, 2] = -1.0  # 17 of the M = 20 tail values tie with the threshold: y_q = 0
    x[:3, 2] = torch.tensor([0.0, 0.5, 1.0])
    x[:97, 3] = -math.inf  # only three finite weights
    x[5, 4] = math.nan
    x[7, 5] = math.inf
    k = pareto_k(x)
    assert k[:4].tolist() == [math.inf] * 4
    assert math.isnan(k[4]) and math.isnan(k[5])
    w = psis_weights(x)
    assert torch.equal(w[:, 0], torch.zeros(100, dtype=torch.float64))
    torch.testing.assert_close(w[:, 1], torch.full((100,), 0.01, dtype=torch.float64))
    torch.testing.assert_close(w[:, 1:4], iwae_fused.normalized_weights(x[:, 1:4]))
    assert torch.isnan(w[:, 4]).all()
    # A few -inf samples among finite ones are simply zero weights; a few ties
    # with the threshold are zero exceedances, which the fit takes as loo does.
    y = torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y[:10, :2] = -math.inf
    y[:, 1] = torch.where(torch.arange(100) < 95, -1.0, y[:, 1])
    y[:, 2] = torch.where(torch.arange(100) < 80, -1.0, y[:, 2])
    k_ref, w_ref = ref_columns(y)
    assert math.isinf(k_ref[1]) and math.isfinite(k_ref[0]) and math.isfinite(k_ref[2])
    torch.testing.assert_close(pareto_k(y), k_ref)
    # Tied raw weights take the smoothed values in an unspecified order: the
    # same multiset of weights per example.
    torch.testing.assert_close(psis_weights(y).sort(0).values, w_ref.sort(0).values)


def test_results_are_constants():
    log_p = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    assert not pareto_k(log_p, log_q).requires_grad
    assert not psis_weights(log_p, log_q).requires_grad


def test_errors():
    with pytest.raises(TypeError, match="expected log_p to be a torch.Tensor"):
        pareto_k([1.0, 2.0])
    with pytest.raises(TypeError, match="expected dim to be an int"):
        psis_weights(torch.zeros(30), dim=0.5)
    with pytest.raises(IndexError, match="dim=2 is out of range"):
        pareto_k(torch.zeros(30, 2), dim=2)
    with pytest.raises(TypeError, match="expected log_p to be a floating-point tensor"):
        pareto_k(torch.zeros(30, dtype=torch.int64))
    with pytest.raises(ValueError, match="has size 0"):
        psis_weights(torch.zeros(0, 3))


# ---- the mergeable top-M state ---------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=3, max_size=3),
    keep=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    empty_at=st.sampled_from([None, 0, 1, 2]),
)
def test_top_state_merge_is_exact_associative_commutative(sizes, keep, seed, empty_at):
    gen = torch.Generator().manual_seed(seed)
    # Small integers: many ties, which an exact merge must keep as they are.
    x = torch.randint(-5, 5, (sum(sizes), 4), generator=gen).double()
    x[x == -5] = -math.inf
    parts = [x[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(3)]
    if empty_at is not None:
        parts[empty_at] = torch.full_like(parts[empty_at], -math.inf)
    a, b, c = (TopState.of(p, keep) for p in parts)
    left, right, swapped = a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(a).merge(b)
    whole = torch.cat(parts).sort(0, descending=True).values[:keep]
    for s in (left, right, swapped):
        assert torch.equal(s.values, whole) and s.count == sum(sizes)


def test_top_state_errors():
    with pytest.raises(ValueError, match="cannot be merged"):
        TopState.of(torch.zeros(5, 2), 3).merge(TopState.of(torch.zeros(5, 2), 4))
    with pytest.raises(ValueError, match="size must be a positive int"):
        TopState.of(torch.zeros(5, 2), 0)
    small = TopState.of(torch.randn(1000, 2), 50)
    with pytest.raises(ValueError, match="need their 96 largest log-weights, but the state keeps 50"):
        small.pareto_k()


# ---- streamed and distributed ------------------------------------------------------


@pytest.mark.parametrize("num,chunk", [(5000, 512), (5000, 100), (1001, 1001), (300, 7), (20, 3)])
def test_streamed_diagnostics_equal_one_shot(num, chunk):
    gen = torch.Generator().manual_seed(num + chunk)
    x = torch.randn(num, 5, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 1, 2, 4, 8.0])
    x[:, 0] = -math.inf  # an example without weights
    fn, calls = serve(x)
    out = estimate_log_likelihood(fn, num, chunk_size=chunk, diagnostics=True)
    assert isinstance(out, iwae_fused.LogLikelihoodEstimate) and max(calls) <= chunk
    ess, max_w = iwae_fused.weight_diagnostics(x)
    close(out.log_likelihood, iwae_fused.iwelbo(x), torch.float64)
    close(out.ess, ess, torch.float64, scale=num)
    close(out.max_weight, max_w, torch.float64)
    assert torch.equal(out.pareto_k, pareto_k(x))  # the same top values, the same fit
    assert out.pareto_k[0].item() == math.inf and out.ess[0].item() == 0
    if num > 20:
        assert torch.isfinite(out.pareto_k[1:]).all()
    plain = estimate_log_likelihood(serve(x)[0], num, chunk_size=chunk)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, out.log_likelihood)


def test_streamed_diagnostics_float32_chunks():
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(2)) * 3
    out = estimate_log_likelihood(serve(x)[0], 3000, chunk_size=256, diagnostics=True)
    ess, max_w = iwae_fused.weight_diagnostics(x.double())
    close(out.ess, ess, torch.float32, scale=3000)
    close(out.max_weight, max_w, torch.float32)
    assert torch.equal(out.pareto_k, pareto_k(x))


def test_diagnostics_must_be_bool():
    with pytest.raises(TypeError, match=r"expected diagnostics to be a bool, but got str"):
        estimate_log_likelihood(serve(torch.zeros(10, 2))[0], 10, diagnostics="yes")


def _distributed_worker(rank, world, port, out_dir, num, chunk):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        full = torch.randn(num, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
        full[:, 0] = -math.inf
        shares = [num // world + (1 if r < num % world else 0) for r in range(world)]
        fn, calls = serve(full[sum(shares[:rank]) :])
        out = estimate_log_likelihood(fn, num, chunk_size=chunk, group=dist.group.WORLD, diagnostics=True)
        # More rows kept than a rank holds: all_gather pads with -inf.
        mine = full[sum(shares[:rank]) : sum(shares[: rank + 1])]
        gathered = TopState.of(mine, num - 1).all_gather(dist.group.WORLD)
        torch.save(
            {"out": tuple(out), "calls": calls, "top": gathered.values, "count": gathered.count},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("num,chunk", [(1001, 100), (41, 5)])
def test_two_processes_diagnostics_agree_with_one_process(tmp_path, num, chunk):
    world = 2
    mp.spawn(_distributed_worker, args=(world, _free_port(), str(tmp_path), num, chunk), nprocs=world, join=True)
    full = torch.randn(num, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    full[:, 0] = -math.inf
    ess, max_w = iwae_fused.weight_diagnostics(full)
    k = pareto_k(full)
    assert math.isinf(k[0]) and torch.isfinite(k[1:]).all()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for r in results:
        ll, r_ess, r_max, r_k = r["out"]
        close(ll, iwae_fused.iwelbo(full), torch.float64)
        close(r_ess, ess, torch.float64, scale=num)
        close(r_max, max_w, torch.float64)
        assert torch.equal(r_k, k)
        assert r["count"] == num
        assert torch.equal(r["top"], full.sort(0, descending=True).values[: num - 1])
    for a, b in zip(results[0]["out"], results[1]["out"]):
        assert torch.equal(a, b)


def test_training_example_reports_k_hat(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from test_example import load_example

    results = load_example().main([
        "--epochs", "1", "--max-steps", "2", "--eval-samples", "100", "--curve-samples", "8",
        "--chunk-size", "32", "--timing-k", "--out", str(tmp_path), "--models", "iwae:5",
        "--diagnostics",
    ])
    khat = results[0]["pareto_k"]
    assert khat.shape == (359,) and torch.isfinite(khat).all()
    above = int((khat > 0.7).sum())
    assert f"{above}/359 test points > 0.7" in capsys.readouterr().out
