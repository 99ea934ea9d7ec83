"""The lane-tile kernels for short slices (csrc/cpu/short_rows.h, issue 13)
against the float64 reference: every K in 1..70 on both sides of the
threshold, odd and even batches, every dtype, strided views, broadcast
log_q, -inf/NaN/+inf slices, with and without split-K, and every op that
runs on them (forward, backward, diagnostics, stats, Renyi, DReG).

Test ids name the path the CPU kernels take for the case:
  lanes_out   lanes across outputs (rows with K < SHORT_K, columns with
              inner <= L / 2 and slabs of K * inner < SHORT_SLAB_VECS * L)
  lanes_smp   lanes across samples (columns with inner <= L / 2, longer slabs)
  rows/cols   the long-slice kernels on the other side of the threshold
  cols1blk    the columns kernel with all of K in one block (K <= 16): tiles
              narrowed to the stream count up to K = 8, and the weights pass
              in tiles of columns over all K rows (benchmarks/NOTES.md CPU
              11, 12)
"""

import math

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from conftest import DTYPES, close, in_layout, log_weights_like

SHORT_K = 128  # kShortK in csrc/cpu/short_rows.h
SHORT_SLAB_VECS = 48  # kShortSlabVecs
ONE_BLOCK_K = 16  # kBlock in csrc/cpu/kernels_impl.h
ops = torch.ops.iwae_fused


def lanes(dtype):
    """Vector lanes of the opmath type under AVX-512 (the test machines)."""
    return 8 if dtype == torch.float64 else 16


def path(shape, dim, dtype):
    K = shape[dim]
    inner = math.prod(shape[dim + 1:])
    if inner == 1:
        return "lanes_out" if K < SHORT_K else "rows"
    if 2 * inner > lanes(dtype):
        return "cols1blk" if K <= ONE_BLOCK_K else "cols"
    return "lanes_out" if K * inner < SHORT_SLAB_VECS * lanes(dtype) else "lanes_smp"


def inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = log_weights_like(shape, dtype, "cpu", gen=gen)
    q = log_weights_like(shape, dtype, "cpu", gen=gen)
    return p, q


def check_fwd_bwd(p, q, dim, dtype, alpha=0.0, scale=1.0):
    """iwelbo and both gradients against float64 autograd of the reference
    on the same (dtype-rounded) inputs, with a random incoming gradient."""
    p = p.detach().requires_grad_()
    q = q.detach().requires_grad_() if q is not None else None
    out = iwae_fused.iwelbo(p, q, dim, alpha=alpha)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(g)
    p64 = p.detach().double().requires_grad_()
    q64 = q.detach().double().requires_grad_() if q is not None else None
    ref = R.iwelbo(p64, q64, dim, alpha=alpha)
    ref.backward(g.double())
    close(out, ref, dtype, scale)
    close(p.grad, p64.grad, dtype, scale)
    if q is not None:
        close(q.grad, q64.grad, dtype, scale)


def case_id(prefix, shape, dim, dtype):
    return f"{path(shape, dim, dtype)}-{prefix}-{'x'.join(map(str, shape))}-d{dim}"


# ---- every K, rows and small-inner columns ---------------------------------


# Every K of 1..70, and both sides of the thresholds.
ROW_KS = list(range(1, 71)) + [SHORT_K - 1, SHORT_K, SHORT_K + 1, 200]
COL_KS = list(range(1, 71)) + [255, 256, 383, 384, 385]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B", [67, 130], ids=["B67", "B130"])
@pytest.mark.parametrize(
    "K", ROW_KS, ids=[f"K{k}-{path((1, k), 1, torch.float32)}" for k in ROW_KS]
)
def test_rows_every_k(K, B, dtype):
    p, q = inputs((B, K), dtype, seed=K)
    check_fwd_bwd(p, q, 1, dtype)


SMALL_INNER = [(k, inner) for inner in (2, 3) for k in COL_KS]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B", [67, 130], ids=["B67", "B130"])
@pytest.mark.parametrize(
    "K,inner", SMALL_INNER,
    ids=[f"K{k}-inner{i}-{path((1, k, i), 1, torch.float32)}" for k, i in SMALL_INNER],
)
def test_small_inner_every_k(K, B, inner, dtype):
    # The id names the float32 path under AVX-512; float64 (L = 8) and AVX2
    # move the threshold, which is why both sides of it are in the K list.
    p, q = inputs((B, K, inner), dtype, seed=K)
    check_fwd_bwd(p, q, 1, dtype)


# Columns with all of K in one block: every tile width (16 vectors at K = 1
# down to 2 at K = 8 with log_q, 16 again from K = 9), tails of every length, and the weights
# pass's column tiles: 2048 columns where a thread has 4 of them ([4, K,
# 4100]: 12 tiles, a 4-column tail), halved below that ([K, 300]).
ONE_BLOCK_CASES = [((k, 300), 0) for k in range(1, ONE_BLOCK_K + 3)] + [
    ((4, k, 4100), 1) for k in (1, 2, 3, 5, 8, 16, 17)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,dim", ONE_BLOCK_CASES,
    ids=[case_id("cols", s, d, torch.float32) for s, d in ONE_BLOCK_CASES],
)
def test_columns_one_block_every_k(shape, dim, dtype):
    p, q = inputs(shape, dtype, seed=shape[dim])
    check_fwd_bwd(p, q, dim, dtype)
    check_fwd_bwd(p, None, dim, dtype)  # half the streams: wider tiles


# ---- tiny inner, many samples: split-K or not ------------------------------

SAMPLES_CASES = [
    ((20001, 2), 0),
    ((20001, 3), 0),
    ((9000, 5), 0),
    ((5000, 8), 0),
    ((3, 20001, 2), 1),
    ((2, 777, 3), 1),
    ((48, 2), 0),
    ((49, 7), 0),
]


@pytest.mark.parametrize("threads", [1, 2], ids=["nosplit", "split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,dim", SAMPLES_CASES,
    ids=[case_id("samples", s, d, torch.float32) for s, d in SAMPLES_CASES],
)
def test_across_samples_split_k(shape, dim, dtype, threads):
    # With 2 threads, 1-3 outputs slabs and K * inner >= 32768 the samples are
    # split in pieces whose states are merged; with 1 thread they are not.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p, q = inputs(shape, dtype)
        # Long sums in half types: the float32 result is rounded once, but the
        # weights are small and many; allow the reference's own spread.
        check_fwd_bwd(p, q, dim, dtype)
        ess, mw = iwae_fused.weight_diagnostics(p, q, dim)
        ress, rmw = R.weight_diagnostics(p.double(), q.double(), dim)
        close(ess, ress, dtype, scale=10 * shape[dim])
        close(mw, rmw, dtype)
    finally:
        torch.set_num_threads(before)


# ---- every op on every path --------------------------------------------------

VARIANT_CASES = [
    ((1001, 2), 1),
    ((1000, 5), 1),
    ((333, 16), 1),
    ((64, 47), 1),
    ((64, 48), 1),
    ((1001, 5, 2), 1),
    ((130, 7, 3), 1),
    ((7, 130, 3), 1),  # small inner, K above the threshold
    ((4000, 2), 0),
    ((2, 4000), 0),  # the wide columns kernel, for contrast
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,dim", VARIANT_CASES,
    ids=[case_id("ops", s, d, torch.float32) for s, d in VARIANT_CASES],
)
def test_every_op(shape, dim, dtype):
    p, q = inputs(shape, dtype)
    p64, q64 = p.double(), q.double()
    # Renyi orders: IWAE, between, beyond; and the forward without log_q.
    for alpha in (0.0, 0.5, 2.0):
        check_fwd_bwd(p, q, dim, dtype, alpha=alpha)
    check_fwd_bwd(p, None, dim, dtype)
    # Diagnostics (the second-moment instantiation).
    ess, mw = iwae_fused.weight_diagnostics(p, q, dim)
    ress, rmw = R.weight_diagnostics(p64, q64, dim)
    close(ess, ress, dtype, scale=shape[dim])
    close(mw, rmw, dtype)
    # Normalised weights (the weights pass with g = 1).
    close(iwae_fused.normalized_weights(p, q, dim), R.normalized_weights(p64, q64, dim), dtype)
    # The mergeable stats: shift + log sum is the log-sum-exp.
    shift, log_sum = ops.logsumexp_stats(p, q, dim)
    close(shift + log_sum, torch.logsumexp(p64 - q64, dim), dtype, scale=10)


@pytest.mark.parametrize("z_weight", ["dreg", "rws", "stl"])
@pytest.mark.parametrize(
    "shape,dim", VARIANT_CASES[:8],
    ids=[case_id("dreg", s, d, torch.float32) for s, d in VARIANT_CASES[:8]],
)
def test_dreg_backward_modes(shape, dim, z_weight):
    # The weights pass's out_q modes (-g w, g w (w - 1), -g w w) on the
    # stream kernel; z = log_p makes the z-path product trivial.
    dtype = torch.float64
    p, q = inputs(shape, dtype)
    grads = []
    for fn in (iwae_fused.dreg, R.dreg):
        pp = p.clone().requires_grad_()
        qq = q.clone().requires_grad_()
        out = fn(pp, qq, pp, dim, z_weight=z_weight)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        out.backward(g)
        grads.append((out.detach(), pp.grad, qq.grad))
    for a, b in zip(*grads):
        close(a, b, dtype)


# ---- layouts and broadcasts --------------------------------------------------

LAYOUT_CASES = [
    ((515, 3), 1), ((515, 33), 1), ((257, 5, 2), 1), ((9001, 2), 0), ((9001, 6), 0),
    ((5, 300), 0), ((3, 2100), 0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["strided", "transposed", "offset"])
@pytest.mark.parametrize(
    "shape,dim", LAYOUT_CASES,
    ids=[case_id("layout", s, d, torch.float32) for s, d in LAYOUT_CASES],
)
def test_strided_views(shape, dim, layout, dtype):
    p, q = inputs(shape, dtype)
    check_fwd_bwd(in_layout(p, layout), in_layout(q, "strided"), dim, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("bshape", ["row", "col", "scalar"])
@pytest.mark.parametrize(
    "shape,dim", LAYOUT_CASES,
    ids=[case_id("bcast", s, d, torch.float32) for s, d in LAYOUT_CASES],
)
def test_broadcast_log_q(shape, dim, bshape, dtype):
    p, q = inputs(shape, dtype)
    if bshape == "row":  # one log_q per sample, shared by the batch
        q = q[tuple(slice(0, 1) if d != dim else slice(None) for d in range(len(shape)))]
    elif bshape == "col":  # one log_q per output
        q = q.narrow(dim, 0, 1)
    else:
        q = q.reshape(-1)[:1].reshape(())
    check_fwd_bwd(p, q, dim, dtype)



# The weights pass over small-inner slabs reads the incoming gradient in
# place where it is dense in output order and needs no widening, widens a
# broadcast scalar once, and copies any other layout per tile: every layout
# of g, on slab tiles (lanes_out) and on slabs streamed one by one
# (lanes_smp), both call forms.
G_LAYOUT_CASES = [((67, 5, 2), 1), ((130, 3, 3), 1), ((40, 70, 2), 1), ((21, 200, 3), 1)]


def g_in_layout(shape, layout, dtype):
    gen = torch.Generator().manual_seed(2)
    B, inner = shape
    if layout == "dense":
        return torch.randn(B, inner, generator=gen).to(dtype)
    if layout == "sum":  # the gradient of out.sum() times a constant
        return torch.full((), 0.7, dtype=dtype).expand(B, inner)
    if layout == "transposed":
        return torch.randn(inner, B, generator=gen).to(dtype).t()
    if layout == "row":  # one value per inner position, shared by the batch
        return torch.randn(inner, generator=gen).to(dtype).expand(B, inner)
    return torch.randn(B, 1, generator=gen).to(dtype).expand(B, inner)  # per slab


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pq", [False, True], ids=["w", "pq"])
@pytest.mark.parametrize("layout", ["dense", "sum", "transposed", "row", "col"])
@pytest.mark.parametrize(
    "shape,dim", G_LAYOUT_CASES,
    ids=[case_id("g", s, d, torch.float32) for s, d in G_LAYOUT_CASES],
)
def test_small_inner_incoming_gradient_layouts(shape, dim, layout, pq, dtype):
    p, q = inputs(shape, dtype)
    p = p.detach().requires_grad_()
    q = q.detach().requires_grad_() if pq else None
    out = iwae_fused.iwelbo(p, q, dim)
    g = g_in_layout(out.shape, layout, dtype)
    out.backward(g)
    p64 = p.detach().double().requires_grad_()
    q64 = q.detach().double().requires_grad_() if pq else None
    R.iwelbo(p64, q64, dim).backward(g.double())
    close(p.grad, p64.grad, dtype)
    if pq:
        close(q.grad, q64.grad, dtype)

# ---- special values ----------------------------------------------------------

SPECIAL_CASES = [c for c in LAYOUT_CASES if c != ((9001, 2), 0)]  # >= 5 outputs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,dim", SPECIAL_CASES,
    ids=[case_id("special", s, d, torch.float32) for s, d in SPECIAL_CASES],
)
def test_neg_inf_nan_pos_inf_slices(shape, dim, dtype):
    p, q = inputs(shape, dtype)
    x = (p - q).movedim(dim, -1).contiguous()  # [..., K], outputs flattened
    flat = x.reshape(-1, x.shape[-1])
    n_out, K = flat.shape
    flat[1] = -math.inf  # an all -inf slice
    flat[2, K // 2] = math.nan  # one NaN
    flat[3, 0] = -math.inf  # one -inf sample in an ordinary slice
    flat[n_out - 1, 0] = math.inf  # one +inf, in the last (tail) output
    x = flat.reshape(x.shape).movedim(-1, dim)
    xg = x.clone().requires_grad_()
    out = iwae_fused.iwelbo(xg, None, dim)
    g = torch.ones_like(out)
    out.backward(g)
    ref = R.iwelbo(x.double(), None, dim)
    close(out, ref, dtype)  # -inf, NaN and +inf must match where they are
    w = R.normalized_weights(x.double(), None, dim)
    gr = xg.grad.movedim(dim, -1).reshape(n_out, K)
    wr = w.movedim(dim, -1).reshape(n_out, K)
    assert torch.equal(gr[1], torch.zeros_like(gr[1]))  # all -inf: weight 0
    assert torch.isnan(gr[2]).all()  # a NaN poisons its slice only
    assert gr[3, 0] == 0  # exp(-inf) is exactly 0
    ok = torch.ones(n_out, dtype=torch.bool)
    ok[[1, 2, n_out - 1]] = False
    close(gr[ok], wr[ok], dtype)
    assert not torch.isnan(gr[ok]).any()
