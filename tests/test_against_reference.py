"""Values and gradients of every op against iwae_fused.reference in float64,
over random shapes, dims, dtypes, layouts and broadcasts (hypothesis)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iwae_fused
from iwae_fused import reference as R

from conftest import DEVICES, DTYPES, LAYOUTS, close, in_layout, log_weights_like

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim))
    dim = draw(st.integers(-ndim, ndim - 1))
    if draw(st.booleans()):  # long sample dims exercise the blocked loops
        shape[dim] = draw(st.sampled_from([16, 33, 50, 129, 300, 1000]))
    if draw(st.booleans()):  # wide batches exercise full vector tiles
        other = [d for d in range(ndim) if d != dim % ndim]
        if other:
            shape[draw(st.sampled_from(other))] = draw(st.sampled_from([17, 64, 130, 300]))
    # Broadcasting: one input may have size-1 dims and fewer leading dims.
    small = list(shape)
    bcast = draw(st.sampled_from(["none", "q", "p"]))
    if bcast != "none":
        ones = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
        small = [1 if o else s for s, o in zip(shape, ones)]
        drop = draw(st.integers(0, ndim))
        while drop and small and small[0] == 1:
            small.pop(0)
            drop -= 1
    p_shape, q_shape = (small, shape) if bcast == "p" else (shape, small)
    return dict(
        p_shape=p_shape,
        q_shape=q_shape,
        dim=dim,
        keepdim=draw(st.booleans()),
        with_q=draw(st.booleans()) or bcast != "none",
        dtype=draw(st.sampled_from(DTYPES)),
        p_layout=draw(st.sampled_from(LAYOUTS)),
        q_layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
        device=draw(st.sampled_from(DEVICES)),
        # Renyi orders: IWAE (most often), between, the exact ELBO, beyond.
        alpha=draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 0.99, 1.0, -1.0, 2.0])),
    )


def make_inputs(c, requires_grad=False):
    gen = torch.Generator().manual_seed(c["seed"])
    dt, dev = c["dtype"], c["device"]
    if not c["with_q"]:
        c = dict(c, p_shape=c["q_shape"] if len(c["q_shape"]) > len(c["p_shape"]) else c["p_shape"])
    p = in_layout(log_weights_like(c["p_shape"], dt, dev, gen=gen), c["p_layout"])
    q = None
    if c["with_q"]:
        q = in_layout(log_weights_like(c["q_shape"], dt, dev, scale=1.0, gen=gen), c["q_layout"])
    if requires_grad:
        p.requires_grad_()
        if q is not None:
            q.requires_grad_()
    return p, q


def as64(t):
    return None if t is None else t.detach().double()


@SETTINGS
@given(cases())
def test_iwelbo_values(c):
    p, q = make_inputs(c)
    out = iwae_fused.iwelbo(p, q, dim=c["dim"], keepdim=c["keepdim"], alpha=c["alpha"])
    ref = R.iwelbo(as64(p), as64(q), dim=c["dim"], keepdim=c["keepdim"], alpha=c["alpha"])
    assert out.shape == ref.shape
    assert out.dtype == (p.dtype if q is None else torch.result_type(p, q))
    assert out.device == p.device
    # 1/(1 - alpha) amplifies the rounding of the scaled log-sum-exp.
    amp = 1.0 if c["alpha"] == 1.0 else max(1.0, 1.0 / abs(1.0 - c["alpha"]))
    close(out, ref, c["dtype"], scale=amp * (1 + ref.abs().max().item()))


@SETTINGS
@given(cases())
def test_iwelbo_gradients(c):
    p, q = make_inputs(c, requires_grad=True)
    out = iwae_fused.iwelbo(p, q, dim=c["dim"], keepdim=c["keepdim"], alpha=c["alpha"])
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(c["seed"] + 1))
    out.backward(g.to(out.dtype).to(out.device))

    p64 = as64(p).requires_grad_()
    q64 = as64(q).requires_grad_() if q is not None else None
    R.iwelbo(p64, q64, dim=c["dim"], keepdim=c["keepdim"], alpha=c["alpha"]).backward(
        g.to(out.dtype).double()
    )
    assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
    close(p.grad, p64.grad, c["dtype"], scale=1 + g.abs().max().item())
    if q is not None:
        assert q.grad.shape == q.shape and q.grad.dtype == q.dtype
        close(q.grad, q64.grad, c["dtype"], scale=1 + g.abs().max().item())


@SETTINGS
@given(cases())
def test_normalized_weights_values(c):
    p, q = make_inputs(c)
    w = iwae_fused.normalized_weights(p, q, dim=c["dim"])
    ref = R.normalized_weights(as64(p), as64(q), dim=c["dim"])
    assert w.shape == ref.shape and w.is_contiguous()
    close(w, ref, c["dtype"])


# Fixed shapes that hit the paths random small shapes rarely reach: the
# benchmark shapes, K split across threads (few outputs, many samples) in both
# layouts, tails of every vector width, a transposed [B, K] input, and
# columns of several tiles in several slabs (each tile asks for the next
# tile's lines, the last of a slab for the next slab's).
SHAPES = [
    ((50, 128), 0),
    ((3, 16, 700), 1),
    ((2, 5, 1000), 1),
    ((128, 50), 1),
    ((5000, 100), 0),
    ((64, 65536), 1),
    ((1, 100_000), 1),
    ((100_000, 3), 0),
    ((20_000, 1), 0),
    ((3, 40_000, 5), 1),
    ((257, 33, 2), -2),
]


@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_shapes(shape, dim, dtype, device):
    gen = torch.Generator().manual_seed(hash((shape, dim)) % 2**31)
    p = log_weights_like(shape, dtype, device, gen=gen).requires_grad_()
    q = log_weights_like(shape, dtype, device, scale=1.0, gen=gen).requires_grad_()
    out = iwae_fused.iwelbo(p, q, dim)
    p64, q64 = as64(p).requires_grad_(), as64(q).requires_grad_()
    ref = R.iwelbo(p64, q64, dim)
    close(out, ref, dtype, scale=1 + ref.abs().max().item())
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(g.to(dtype).to(device))
    ref.backward(g.to(dtype).double())
    close(p.grad, p64.grad, dtype)
    close(q.grad, q64.grad, dtype)
    # The log-weights-only form and the diagnostics take the same paths
    # with one operand, and the diagnostics with a second moment.
    w = (p.detach() - q.detach()).requires_grad_()
    w64 = as64(w).requires_grad_()
    out_w, ref_w = iwae_fused.iwelbo(w, dim=dim), R.iwelbo(w64, None, dim)
    close(out_w, ref_w, dtype, scale=1 + ref_w.abs().max().item())
    out_w.backward(g.to(dtype).to(device))
    ref_w.backward(g.to(dtype).double())
    close(w.grad, w64.grad, dtype)
    K = shape[dim]
    for q_arg in (None, q.detach()):
        ess, max_w = iwae_fused.weight_diagnostics(p.detach(), q_arg, dim)
        ess_ref, max_w_ref = R.weight_diagnostics(
            as64(p.detach()), None if q_arg is None else as64(q_arg), dim)
        close(ess, ess_ref, dtype, scale=K)
        close(max_w, max_w_ref, dtype)


def test_transposed_input_without_copy():
    # [B, K] viewed from a [K, B] buffer is read in place (columns through a
    # transposed view), and the gradient comes back contiguous.
    kb = torch.randn(300, 40, dtype=torch.float64)
    bk = kb.t().requires_grad_()
    out = iwae_fused.iwelbo(bk, dim=1)
    close(out, R.iwelbo(bk.detach(), dim=1), torch.float64)
    out.sum().backward()
    close(bk.grad, torch.softmax(bk.detach(), 1), torch.float64)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_result(threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(40_000, 7, generator=gen, dtype=torch.float64)
        close(iwae_fused.iwelbo(x), R.iwelbo(x), torch.float64)
        close(iwae_fused.iwelbo(x.t(), dim=1), R.iwelbo(x), torch.float64)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_error_at_most_twice_eager(dtype, device):
    # The eager expression in half precision rounds the difference, the
    # log-sum-exp and the subtraction of log K; the op rounds once.
    gen = torch.Generator().manual_seed(1)
    p = log_weights_like((500, 200), dtype, device, gen=gen)
    q = log_weights_like((500, 200), dtype, device, scale=1.0, gen=gen)
    ref = R.iwelbo(p.double(), q.double())
    ours = (iwae_fused.iwelbo(p, q).double() - ref).abs().max()
    eager = (R.iwelbo(p, q).double() - ref).abs().max()
    assert ours <= 2 * eager + 1e-12
    assert math.isfinite(ours.item())


@pytest.mark.parametrize("grad_kind", ["contiguous", "expanded", "strided", "keepdim-expanded"])
@pytest.mark.parametrize("shape,dim", [((40, 33), 0), ((33, 40), 1), ((6, 40, 5), 1)])
def test_incoming_gradient_layouts(grad_kind, shape, dim, device):
    # The backward reads the incoming gradient in place when it can (the
    # expanded scalar of .mean(), a contiguous tensor) and copies otherwise.
    gen = torch.Generator().manual_seed(7)
    p = log_weights_like(shape, torch.float64, device, gen=gen).requires_grad_()
    keepdim = grad_kind == "keepdim-expanded"
    out = iwae_fused.iwelbo(p, dim=dim, keepdim=keepdim)
    if grad_kind == "contiguous":
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    elif grad_kind == "strided":
        g = torch.randn(*out.shape[:-1], 2 * out.shape[-1], generator=gen, dtype=torch.float64)
        g = g[..., ::2].to(device)
    else:
        g = torch.tensor(0.37, dtype=torch.float64, device=device).expand(out.shape)
    out.backward(g)
    expected = torch.softmax(p.detach(), dim) * (g if keepdim else g.unsqueeze(dim))
    close(p.grad, expected, torch.float64)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16])
def test_short_dense_rows_every_tail(K):
    """Dense rows [N, K] over the last dim, float32 (the CPU's lane tiles:
    K of 2, 4 and 8 deinterleaved in halves, 3, 5, 6 and 7 by two-source
    permutes, others transposed), N around the 16-row
    vectors and the 64-row tiles, an all -inf row, +inf and NaN: values and
    gradients against the float64 reference, the special rows against the
    rules (-inf bound and weight 0; NaN where +inf or NaN is)."""
    gen = torch.Generator().manual_seed(K)
    for n in (1, 15, 16, 17, 63, 64, 65, 257):
        for with_q in (False, True):
            p = (torch.randn(n, K, generator=gen, dtype=torch.float64) * 4).float()
            q = torch.randn(n, K, generator=gen, dtype=torch.float64).float() if with_q else None
            special = n >= 4
            if special:
                p[0] = -math.inf
                p[1, 0] = math.inf
                p[2, K - 1] = math.nan
            pg = p.clone().requires_grad_()
            out = iwae_fused.iwelbo(pg, q, dim=1)
            g = torch.randn(n, generator=gen)
            out.backward(g)
            rows = slice(3, None) if special else slice(None)
            p64 = p[rows].double().requires_grad_()
            q64 = None if q is None else q[rows].double()
            ref = R.iwelbo(p64, q64, 1)
            ref.backward(g[rows].double())
            close(out[rows], ref, torch.float32, scale=10)
            close(pg.grad[rows], p64.grad, torch.float32)
            if special:
                assert out[0] == -math.inf and torch.all(pg.grad[0] == 0)
                assert torch.isnan(out[1]) or out[1] == math.inf
                assert torch.isnan(out[2]) and torch.isnan(pg.grad[2]).all()


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_short_dense_rows_split_in_registers(K, dtype):
    """Dense rows of 2 to 8 samples (on AVX-512 the forward splits 16 rows
    into one vector per sample in registers: in halves for 2, 4, 8, by
    permutes for 3, 5, 6, 7), in the half types (widened before the split)
    and with Renyi's alpha (scaled before it), 16-row vectors full and
    partial: values and gradients against the float64 reference."""
    gen = torch.Generator().manual_seed(100 + K)
    for n, alpha in ((37, 0.0), (80, 0.5), (5, -2.0)):
        p64 = torch.randn(n, K, generator=gen, dtype=torch.float64) * 3
        q64 = torch.randn(n, K, generator=gen, dtype=torch.float64)
        p, q = p64.to(dtype).requires_grad_(), q64.to(dtype).requires_grad_()
        out = iwae_fused.iwelbo(p, q, dim=1, alpha=alpha)
        g = torch.randn(n, generator=gen, dtype=torch.float64)
        out.backward(g.to(dtype))
        pr, qr = p.detach().double().requires_grad_(), q.detach().double().requires_grad_()
        ref = R.iwelbo(pr, qr, 1, alpha=alpha)
        ref.backward(g)
        close(out, ref, dtype, scale=4)
        close(p.grad, pr.grad, dtype)
        close(q.grad, qr.grad, dtype)


@pytest.mark.parametrize("inner", [2, 4, 8])
@pytest.mark.parametrize("K", [2, 3, 4, 5, 6, 7, 8])
def test_short_dense_slabs_split_in_registers(K, inner):
    """Dense slabs [N, K, inner] over dim 1 with inner dividing 16 (on
    AVX-512 the forward splits 16 outputs, 16 / inner whole slabs, into one
    vector per sample in registers): N around the 16-output vector and the
    64-output tile, both call forms, float32, bfloat16 and float16, Renyi's alpha,
    an all -inf slice and NaN: values and gradients against the float64
    reference."""
    gen = torch.Generator().manual_seed(10 * K + inner)
    for n, dtype, alpha in ((1, torch.float32, 0.0), (8, torch.float32, 0.0),
                            (9, torch.float32, 0.5), (33, torch.bfloat16, 0.0),
                            (17, torch.float16, 0.0),
                            (100, torch.float32, -2.0)):
        for with_q in (False, True):
            p64 = torch.randn(n, K, inner, generator=gen, dtype=torch.float64) * 3
            q64 = torch.randn(n, K, inner, generator=gen, dtype=torch.float64)
            special = n >= 8
            if special:
                p64[0, :, 0] = -math.inf
                p64[1, K - 1, inner - 1] = math.nan
            p = p64.to(dtype).requires_grad_()
            q = q64.to(dtype) if with_q else None
            out = iwae_fused.iwelbo(p, q, dim=1, alpha=alpha)
            g = torch.randn(n, inner, generator=gen, dtype=torch.float64)
            out.backward(g.to(dtype))
            rows = slice(2, None) if special else slice(None)
            pr = p.detach()[rows].double().requires_grad_()
            qr = None if q is None else q[rows].double()
            ref = R.iwelbo(pr, qr, 1, alpha=alpha)
            ref.backward(g[rows])
            close(out[rows], ref, dtype, scale=4)
            close(p.grad[rows], pr.grad, dtype)
            if special:
                assert out[0, 0] == -math.inf and torch.all(p.grad[0, :, 0] == 0)
                assert torch.isnan(out[1, inner - 1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_columns_in_spans(dtype, threads):
    """Columns of more than one 16-sample block over many outputs (on the
    CPU a span of tiles is walked block by block, each column's state kept
    between blocks): spans and tiles full and partial, one output row and
    several, a [B, K] view of a [K, B] buffer, both call forms, log_q
    broadcast over the samples, Renyi's alpha on either side of 1, the
    weight diagnostics with and without log_q, and columns whose first
    block is all -inf, whose later blocks are all -inf, that are all -inf,
    or whose blocks lie hundreds of nats apart: values, gradients and
    diagnostics against the float64 reference."""
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(47 + threads)
    try:
        torch.set_num_threads(threads)
        # (buffer shape, sample dim of the buffer, whether the op sees its transpose)
        for shape, kdim, swap in (((50, 16461), 0, False), ((3, 33, 2000), 1, False),
                                  ((17, 9000), 0, False), ((40, 5000), 0, True)):
            K = shape[kdim]
            p64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
            q64 = torch.randn(shape, generator=gen, dtype=torch.float64)

            def at(k, i):  # (sample k, output column i) of the first output row
                idx = [0] * len(shape)
                idx[kdim], idx[-1] = k, i
                return tuple(idx)

            n = shape[-1]  # output columns
            dead = n // 2
            p64[at(slice(0, 16), 5)] = -math.inf  # first block all -inf
            p64[at(slice(16, None), n // 7)] = -math.inf  # later blocks all -inf
            p64[at(slice(None), dead)] = -math.inf  # the whole column
            p64[at(slice(0, 16), n // 3)] -= 600.0  # blocks 600 nats apart
            p64[at(slice(16, None), n // 3 + 1)] += 400.0
            view = (lambda t: t.t()) if swap else (lambda t: t)
            dim = 1 if swap else kdim
            q_one = q64.narrow(kdim, 0, 1)  # one log_q for every sample
            for q_src, alpha in ((None, 0.0), (q64, 0.0), (q64, 0.5), (q64, 2.0), (q_one, 0.0)):
                leaf = p64.to(dtype).clone().requires_grad_()
                p = view(leaf)
                q = None if q_src is None else view(q_src.to(dtype))
                out = iwae_fused.iwelbo(p, q, dim=dim, alpha=alpha)
                g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
                out.backward(g.to(dtype))
                pr = leaf.detach().double().requires_grad_()
                qr = None if q is None else q.double()
                ref = R.iwelbo(view(pr), qr, dim, alpha=alpha)
                ref.backward(g)
                close(out, ref, dtype, scale=4)
                if alpha < 1:  # the all -inf column: weight 0 (the reference's softmax is NaN)
                    assert torch.all(leaf.grad[at(slice(None), dead)] == 0)
                    pr.grad[at(slice(None), dead)] = 0
                close(leaf.grad, pr.grad, dtype)
            for q_src in (None, q64):
                pd = view(p64.to(dtype))
                qd = None if q_src is None else view(q_src.to(dtype))
                ess, max_w = iwae_fused.weight_diagnostics(pd, qd, dim)
                ess_ref, max_w_ref = R.weight_diagnostics(
                    pd.double(), None if qd is None else qd.double(), dim)
                close(ess, ess_ref, dtype, scale=K)
                close(max_w, max_w_ref, dtype)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_columns_weights_in_tiles(dtype, threads):
    """The backward of more than 16 samples over many columns (on the CPU
    tiles of thousands of columns, all samples of a tile before the next,
    the last tile partial): one output row and several, a [B, K] view of a
    [K, B] buffer, log_q broadcast over the samples, Renyi's alpha on either
    side of 1, DReG's three estimators and the normalized weights, with
    columns all -inf, -inf in some samples, NaN, and samples hundreds of nats
    apart: gradients and weights against the float64 reference."""
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(48 + threads)
    try:
        torch.set_num_threads(threads)
        # (buffer shape, sample dim of the buffer, whether the op sees its transpose)
        for shape, kdim, swap in (((20, 70001), 0, False), ((3, 17, 30000), 1, False),
                                  ((33, 70000), 0, True)):
            K, n = shape[kdim], shape[-1]
            p64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
            q64 = torch.randn(shape, generator=gen, dtype=torch.float64)

            def at(k, i):  # (sample k, output column i) of the last output row
                idx = [-1] * len(shape)
                idx[kdim], idx[-1] = k, i
                return tuple(idx)

            dead = n - 3  # in the last, partial tile
            p64[at(slice(None), dead)] = -math.inf
            p64[at(slice(0, K, 2), 9000)] = -math.inf
            p64[at(slice(0, 5), 40000 % n)] -= 700.0
            # the last column of a tile of 8,192 (2 threads) and of 16,384 (1)
            p64[at(3, 8191)] = p64[at(K - 1, 16383)] = math.nan
            view = (lambda t: t.t()) if swap else (lambda t: t)
            dim = 1 if swap else kdim
            q_one = q64.narrow(kdim, 0, 1)  # one log_q for every sample
            for q_src, alpha in ((None, 0.0), (q64, 0.0), (q64, 0.5), (q64, 2.0), (q_one, 0.0)):
                leaf = p64.to(dtype).clone().requires_grad_()
                qleaf = None if q_src is None else q_src.to(dtype).clone().requires_grad_()
                out = iwae_fused.iwelbo(view(leaf), None if qleaf is None else view(qleaf),
                                        dim=dim, alpha=alpha)
                g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
                out.backward(g.to(dtype))
                pr = leaf.detach().double().requires_grad_()
                qr = None if qleaf is None else qleaf.detach().double().requires_grad_()
                ref = R.iwelbo(view(pr), None if qr is None else view(qr), dim, alpha=alpha)
                ref.backward(g)
                ok = ~torch.isnan(ref)  # the NaN column: NaN here and there
                assert torch.equal(torch.isnan(out), ~ok)
                close(out[ok], ref[ok], dtype, scale=4)
                if alpha < 1:  # the all -inf column: weight 0 (the reference's softmax is NaN)
                    assert torch.all(leaf.grad[at(slice(None), dead)] == 0)
                    pr.grad[at(slice(None), dead)] = 0
                    if qr is not None:
                        qr.grad[at(slice(None), dead)] = 0
                close(leaf.grad, pr.grad, dtype)
                if qr is not None:
                    close(qleaf.grad, qr.grad, dtype)
            pd, qd = view(p64.to(dtype)), view(q64.to(dtype))
            w = iwae_fused.normalized_weights(pd, qd, dim)
            close(w, R.normalized_weights(pd.double(), qd.double(), dim), dtype)
            for z_weight in ("dreg", "rws", "stl"):
                # z = log_p itself: the z-path correction comes back to log_p
                pl, ql = pd.clone().requires_grad_(), qd.clone().requires_grad_()
                out = iwae_fused.dreg(pl, ql, pl, dim, z_weight=z_weight)
                g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
                out.backward(g.to(dtype))
                pr = pd.detach().double().clone().requires_grad_()
                qr = qd.detach().double().clone().requires_grad_()
                R.dreg(pr, qr, pr, dim, z_weight=z_weight).backward(g)
                for got, want in ((pl.grad, pr.grad), (ql.grad, qr.grad)):
                    view(want)[at(slice(None), dead)] = 0  # the reference's NaN weights
                    close(got, want, dtype)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0, -2.0])
@pytest.mark.parametrize("shape,dim,q_shape", [
    ((50, 2), 1, None), ((50, 4), 1, (50, 4)), ((6, 40), 0, (6, 40)),
    ((7, 9, 4), 1, (1, 9, 4)), ((30, 1), 1, None)])
def test_backward_with_stats_not_saved(shape, dim, q_shape, alpha, device):
    """iwelbo_backward given stats of shape [0] (what the GPU's training step
    passes where it saves none): the same gradients as from saved stats, and
    the float64 reference's, on every device, layout and alpha."""
    gen = torch.Generator().manual_seed(11)
    p = log_weights_like(shape, torch.float64, device, gen=gen)
    q = log_weights_like(q_shape, torch.float64, device, scale=1.0, gen=gen) if q_shape else None
    _, stats = torch.ops.iwae_fused._iwelbo_forward(p, q, dim, False, alpha)
    g = torch.randn(stats.shape[1:], generator=gen, dtype=torch.float64).to(device)
    empty = torch.empty(0, dtype=torch.float64, device=device)
    for mask in ([True, True], [True, False]):
        saved = torch.ops.iwae_fused.iwelbo_backward(g, stats, p, q, dim, False, alpha, mask)
        recomputed = torch.ops.iwae_fused.iwelbo_backward(g, empty, p, q, dim, False, alpha, mask)
        for a, b in zip(saved, recomputed):
            close(b, a, torch.float64)
    p64 = p.clone().requires_grad_()
    R.iwelbo(p64, q, dim, False, alpha).backward(g)
    full = torch.broadcast_shapes(p.shape, q.shape) if q is not None else p.shape
    close(recomputed[0].sum_to_size(p.shape) if recomputed[0].shape != p.shape else recomputed[0],
          p64.grad, torch.float64)
    assert full == recomputed[0].shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_renyi_alpha_one_is_the_elbo_exactly(dtype, device):
    gen = torch.Generator().manual_seed(3)
    p = log_weights_like((40, 9), dtype, device, gen=gen).requires_grad_()
    q = log_weights_like((40, 9), dtype, device, scale=1.0, gen=gen)
    out = iwae_fused.iwelbo(p, q, alpha=1.0)
    close(out, (p.double() - q.double()).mean(0), dtype, scale=10)
    out.sum().backward()
    assert torch.all(p.grad == torch.tensor(1 / 40, dtype=dtype))


@pytest.mark.parametrize("alpha", [-3.0, -1.0, 0.0, 0.5, 0.9])
def test_renyi_bounds_are_ordered_in_alpha(alpha):
    # L_alpha decreases in alpha (Li & Turner 2016, Theorem 1): between the
    # ELBO (alpha = 1) and the max (alpha -> -inf).
    x = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    lo = iwae_fused.iwelbo(x, alpha=alpha + 0.05)
    hi = iwae_fused.iwelbo(x, alpha=alpha)
    assert torch.all(hi >= lo - 1e-12)
    assert torch.all(iwae_fused.iwelbo(x, alpha=1.0) <= lo + 1e-12)
