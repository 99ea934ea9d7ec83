"""The CUDA kernels, executed from their CUDA source on the emulated GPU
(iwae_fused.cuda_emulator), with the assertions a GPU run would get: values,
stats and gradients against the float64 reference and against the CPU
kernels, every op, all four dtypes. Each test id names the launch path it
covers, and each test asserts from the launch log that the path was taken
(tests/README.md has the coverage table)."""

import math
import zlib

import pytest
import torch

import iwae_fused
from iwae_fused import reference as R

from iwae_fused import cuda_emulator

from conftest import DTYPES, TOL, close, log_weights_like
from emulated import (CENSUS, OPS, instantiation, kernels, launch_census, never_launched,  # noqa: F401
                      pytestmark, run_emulated, vec_width)

# The small device that reaches the grid-z loop with a handful of outputs.
TOY_Z = dict(max_grid_z=4)
# One SM holding one block of the launch's column kernel: any grid fills it
# (test_reduction_path names the instantiation).
ONE_SLOT = dict(sm_count=1, one_slot=True)


def inputs(shape, dtype, with_q=True, seed=0, q_shape=None):
    gen = torch.Generator().manual_seed(seed)
    p = log_weights_like(shape, dtype, "cpu", gen=gen)
    q = log_weights_like(q_shape or shape, dtype, "cpu", scale=1.0, gen=gen) if with_q else None
    return p, q


def fwd_bwd(p, q, dim, g, alpha=0.0, keepdim=False, mask=(True, True)):
    out, stats = OPS._iwelbo_forward(p, q, dim, keepdim, alpha)
    gp, gq = OPS.iwelbo_backward(g, stats, p, q, dim, keepdim, alpha, list(mask))
    return out, stats, gp, gq


def reference(p, q, dim, g, alpha=0.0, keepdim=False):
    p64 = p.detach().double().requires_grad_()
    q64 = None if q is None else q.detach().double().requires_grad_()
    out = R.iwelbo(p64, q64, dim, keepdim, alpha)
    out.backward(g.double())
    return out.detach(), p64.grad, None if q is None else q64.grad


def full_grad(t, like):
    """A backward output as the full broadcast gradient (the op's), summed to like's shape."""
    return t if t.shape == like.shape else t.sum_to_size(like.shape)


def check_iwelbo(p, q, dim, dtype, alpha=0.0, keepdim=False, device=None, g=None, mask=(True, True)):
    """Runs forward and backward on the emulated GPU and on the CPU kernels;
    checks both against the float64 reference, and the stats against the
    CPU kernels'. Returns the launches."""
    out_shape = R.iwelbo(p.double(), None if q is None else q.double(), dim, keepdim, alpha).shape
    if g is None:
        g = torch.randn(out_shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    (out, stats, gp, gq), launches = run_emulated(
        lambda: fwd_bwd(p, q, dim, g, alpha, keepdim, mask), **(device or {}))
    c_out, c_stats, c_gp, c_gq = fwd_bwd(p, q, dim, g, alpha, keepdim, mask)
    r_out, r_gp, r_gq = reference(p, q, dim, g, alpha, keepdim)
    close(out, r_out, dtype)
    close(out, c_out, dtype)
    close(stats, c_stats, dtype)
    if mask[0]:
        close(full_grad(gp, p).double(), r_gp, dtype)
    else:
        assert gp.numel() == 0
    if q is not None and mask[1]:
        close(full_grad(gq, q).double(), r_gq, dtype)
    return launches


# ---- every reduction launch path -------------------------------------------
# (shape, dim, kernel, threads per row or block.x, split-K, device)
PATHS = {
    "rows-warp": ((20, 104), 1, "reduce_rows_kernel", "32", False, {}),
    "rows-warp-splitk": ((3, 4096), 1, "reduce_rows_kernel", "32", True, {}),
    "rows-block": ((3, 5000), 1, "reduce_rows_kernel", "256", False, {}),
    "rows-block-splitk": ((2, 33000), 1, "reduce_rows_kernel", "256", True, {}),
    "cols-one-piece": ((72, 40), 0, "reduce_cols_kernel", None, False, {}),
    "cols-splitk": ((1700, 40), 0, "reduce_cols_kernel", None, True, {}),
    "cols-tx1": (None, 1, "reduce_cols_kernel", 1, False, {}),
    # the widest blocks, on a device of one resident slot (no narrowing)
    "cols-tx32": ((70, 256), 0, "reduce_cols_kernel", 32, False, ONE_SLOT),
    "cols-tx-uneven": ((70, 200), 0, "reduce_cols_kernel", 25, False, ONE_SLOT),
    # too few column blocks for a wave: narrower blocks (8 threads per row,
    # a tree of 32 states), then split K for what they cannot fill; 25
    # vectors make 3 blocks of 10 threads (an even width: whole sectors) x 25
    # rows (a tree over a TY that is no power of two, 5 lanes idle)
    "cols-narrow": ((70, 512), 0, "reduce_cols_kernel", 8, False, {}),
    "cols-narrow-splitk": ((1100, 128), 0, "reduce_cols_kernel", 8, True, {}),
    "cols-narrow-uneven": (lambda v: (70, 25 * v), 0, "reduce_cols_kernel", 10, False, {}),
    "cols-gridz-loop": ((10, 72, 8), 1, "reduce_cols_kernel", None, False, TOY_Z),
    # short slices (K <= 64, contiguous): a tile of whole slices per block
    "tiles-rows-K2": ((3000, 2), 1, "reduce_tiles_kernel", None, False, {}),
    "tiles-rows-K64": ((70, 64), 1, "reduce_tiles_kernel", None, False, {}),
    "tiles-small-inner": ((90, 50, 2), 1, "reduce_tiles_kernel", None, False, {}),
    "tiles-cols-K8": ((8, 200), 0, "reduce_tiles_kernel", None, False, {}),
    "tiles-rows-multi-tile": ((9000, 8), 1, "reduce_tiles_kernel", None, False, {}),
    # enough blocks to fill the device (a one-SM toy wants two): K never split
    "rows-warp-full-grid": ((20, 104), 1, "reduce_rows_kernel", "32", False, dict(sm_count=1)),
    "cols-full-grid": ((70, 512), 0, "reduce_cols_kernel", 32, False, ONE_SLOT),
    # 80 vectors of columns: 3 blocks of 27 threads per row, the last one idle
    "cols-idle-threads": (lambda v: (40, 80 * v), 0, "reduce_cols_kernel", 27, False, ONE_SLOT),
    # K = 1 in columns: any inner size keeps 16-byte vectors, the last one partial
    "cols-K1-tail": ((1, 4101), 0, "reduce_cols_kernel", None, False, {}),
}


def seed_of(name):
    return zlib.crc32(name.encode()) % 1000


@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", list(PATHS))
def test_reduction_path(path, dtype, with_q):
    shape, dim, kernel, tpr, split, device = PATHS[path]
    if shape is None:  # one vector of columns per output row: block.x == 1
        shape = (5, 70, vec_width(dtype))
    elif callable(shape):
        shape = shape(vec_width(dtype))
    p, q = inputs(shape, dtype, with_q, seed=seed_of(path))
    if device.get("one_slot"):
        name = instantiation(kernel, dtype, vec_width(dtype), with_q)
        device = dict(sm_count=1, resident_blocks={name: 1})
    launches = check_iwelbo(p, q, dim, dtype, device=device)
    (args, rec), = kernels(launches, kernel)
    assert args[1] == str(vec_width(dtype)), "expected the 16-byte vector path"
    extra = (int(tpr),) if kernel == "reduce_rows_kernel" else ()
    assert rec["kernel"] == instantiation(kernel, dtype, vec_width(dtype), *extra, with_q)
    if kernel == "reduce_rows_kernel":
        assert args[2] == tpr
    elif kernel == "reduce_tiles_kernel":
        assert rec["grid"][0] >= (2 if "multi-tile" in path else 1)
    elif tpr is not None:
        assert rec["block"][0] == tpr
    assert (rec["grid"][1] > 1) == split
    assert bool(kernels(launches, "merge_kernel")) == split
    if path == "cols-gridz-loop":
        assert rec["grid"][2] == 4 < shape[0]
    assert kernels(launches, "weights_kernel") or kernels(launches, "weights_flat_kernel"), \
        "the backward ran on the emulated GPU"


# ---- vector width, alignment, strides and broadcasts ------------------------


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 8])
@pytest.mark.parametrize("layout", ["rows", "cols", "tiles"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_vector_width_follows_alignment(dtype, layout, offset):
    """A storage offset keeps the vector path exactly when the data stay
    16-byte aligned (an offset of 4 floats does; 1, 2, 3 elements don't)."""
    shape, dim = {"rows": ((6, 104), 1), "cols": ((72, 24), 0), "tiles": ((40, 24), 1)}[layout]
    p0, q = inputs(shape, dtype)
    buf = torch.full((p0.numel() + offset,), float("nan"), dtype=dtype)
    p = buf[offset:].view(shape)
    p.copy_(p0)
    launches = check_iwelbo(p, q, dim, dtype)
    aligned = offset * p.element_size() % 16 == 0
    kernel = {"rows": "reduce_rows_kernel", "cols": "reduce_cols_kernel",
              "tiles": "reduce_tiles_kernel"}[layout]
    (args, _), = kernels(launches, kernel)
    assert args[1] == (str(vec_width(dtype)) if aligned else "1")
    flat = kernels(launches, "weights_flat_kernel")
    if flat:  # short runs, dense and 16-byte aligned: one flat run of vectors
        assert aligned
    else:
        (wargs, _), = kernels(launches, "weights_kernel")
        assert wargs[1] == (str(vec_width(dtype)) if aligned else "1")


CASES = {
    "rows-odd-K": ((9, 37), None, 1),
    "cols-odd-inner": ((37, 9), None, 0),
    "cols-middle-dim-odd": ((3, 21, 5), None, 1),
    "rows-broadcast-q": ((12, 40), (1, 40), 1),
    "cols-broadcast-q": ((40, 12), (40, 1), 0),
    "cols-broadcast-q-leading": ((4, 40, 12), (40, 12), 1),
}


@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_odd_sizes_and_broadcasts(case, dtype, with_q):
    shape, q_shape, dim = CASES[case]
    p, q = inputs(shape, dtype, with_q or q_shape is not None, q_shape=q_shape)
    check_iwelbo(p, q, dim, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_strided_and_transposed_inputs(dtype, layout):
    p, q = inputs((30, 16), dtype)
    if layout == "strided":  # every other element: copied once into the kernel's layout
        big = torch.full((30, 32), float("nan"), dtype=dtype)
        big[:, ::2] = p
        p = big[:, ::2]
    else:  # [K, B] stored as [B, K]: columns read in place through the swap
        p = p.t().contiguous().t()
    for dim in (0, 1):
        check_iwelbo(p, q, dim, dtype)


# ---- every output combination, with split-K ---------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["rows-warp-splitk", "cols-splitk"])
def test_output_combinations_with_splitk(path, dtype):
    shape, dim = PATHS[path][:2]
    p, q = inputs(shape, dtype)

    def every_output():
        return (
            OPS.iwelbo(p, q, dim),  # the bound alone
            OPS._iwelbo_forward(p, q, dim, False),  # bound and stats
            OPS.logsumexp_stats(p, q, dim),  # the plain log-sum
            OPS.weight_diagnostics(p, q, dim),  # ESS and the largest weight
            OPS.normalized_weights(p, q, dim),  # stats, then the weights pass
        )

    emu, launches = run_emulated(every_output)
    cpu = every_output()
    lw = (p.double() - q.double())
    close(emu[0], R.iwelbo(p.double(), q.double(), dim), dtype)
    close(emu[1][0], cpu[1][0], dtype)
    close(emu[1][1], cpu[1][1], dtype)
    close(emu[2], cpu[2], dtype)
    close(emu[2][0] + emu[2][1], torch.logsumexp(lw, dim), dtype)
    ess, max_w = R.weight_diagnostics(p.double(), q.double(), dim)
    close(emu[3][0], ess, dtype, scale=ess.abs().max().item())
    close(emu[3][1], max_w, dtype)
    close(emu[4], R.normalized_weights(p.double(), q.double(), dim), dtype)
    reduce_kernel = "reduce_rows_kernel" if path.startswith("rows") else "reduce_cols_kernel"
    assert len(kernels(launches, reduce_kernel)) == 5
    assert all(r["grid"][1] > 1 for _, r in kernels(launches, reduce_kernel))
    assert len(kernels(launches, "merge_kernel")) == 5


# ---- the scalar path (VEC = 1): rows not 16-byte aligned ---------------------
# (family, shape, dim, kernel, threads per row, split-K, device)
# (K not a multiple of the column kernel's 4 rows per step, nor of the tile
# kernel's: their last step's lanes past K read as -inf.)
SCALAR = {
    "rows-warp": ((20, 104), 1, "reduce_rows_kernel", 32, False, dict(sm_count=1)),
    "rows-warp-splitk": ((3, 4096), 1, "reduce_rows_kernel", 32, True, {}),
    # one wave of a 1-SM device (8 resident blocks by threads): 8 rows, no split
    "rows-block": ((8, 5000), 1, "reduce_rows_kernel", 256, False, dict(sm_count=1)),
    "rows-block-splitk": ((2, 5000), 1, "reduce_rows_kernel", 256, True, {}),
    "cols": ((71, 40), 0, "reduce_cols_kernel", None, False, dict(sm_count=1)),
    "cols-splitk": ((1701, 12), 0, "reduce_cols_kernel", None, True, {}),
    "tiles": ((40, 23), 1, "reduce_tiles_kernel", None, False, {}),
    "tiles-cols": ((7, 200), 0, "reduce_tiles_kernel", None, False, {}),
}


def offset_view(t, offset=1):
    """t's values in a buffer at an element offset: no longer 16-byte aligned."""
    buf = torch.full((t.numel() + offset,), float("nan"), dtype=t.dtype)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", list(SCALAR))
def test_scalar_path(family, dtype, with_q):
    """Every reduction and the weights kernel with scalar loads (log_p one
    element off alignment), with and without log_q; the scalar path splits K
    where there are too few outputs (workspace + merge_kernel) as the vector
    path does."""
    shape, dim, kernel, tpr, split, device = SCALAR[family]
    p, q = inputs(shape, dtype, with_q, seed=3)
    launches = check_iwelbo(offset_view(p), q, dim, dtype, device=device)
    extra = (tpr,) if tpr else ()
    (_, rec), = kernels(launches, kernel)
    assert rec["kernel"] == instantiation(kernel, dtype, 1, *extra, with_q)
    assert (rec["grid"][1] > 1) == split
    assert bool(kernels(launches, "merge_kernel")) == split
    (_, w), = kernels(launches, "weights_kernel")
    cols = family.startswith("cols") or family.endswith("-cols")
    assert w["kernel"] == instantiation("weights_kernel", dtype, 1, with_q, cols)


def test_short_slices_not_contiguous_skip_the_tile():
    """Tiles read whole contiguous slices: columns cut from wider rows (K = 8
    samples of 37 of 40 columns) take the column kernel; three rows of K = 8
    cut from rows of 16, read through a transpose (K contiguous, the rows 16
    apart), take the row kernel."""
    p0, q = inputs((8, 40), torch.float32)
    launches = check_iwelbo(p0[:, :37], q[:, :37], 0, torch.float32)
    assert kernels(launches, "reduce_cols_kernel") and not kernels(launches, "reduce_tiles_kernel")
    p0, q = inputs((1, 3, 16), torch.float32)
    p, q = p0[:, :, :8].transpose(1, 2), q[:, :, :8].transpose(1, 2)  # [1, 8, 3] over dim 1
    launches = check_iwelbo(p, q, 1, torch.float32)
    assert kernels(launches, "reduce_rows_kernel") and not kernels(launches, "reduce_tiles_kernel")


def test_tile_count_keeps_vector_alignment():
    """A tile holds whole slices, as many as keep every tile 16-byte aligned
    (tiles.h): 63 x 32 floats, two slices a tile, 16-byte vectors; 63 x 33,
    one odd-sized slice a tile, which no multiple can align: scalar loads."""
    for inner, vec in [(32, 4), (33, 1)]:
        p, q = inputs((3, 63, inner), torch.float32)
        launches = check_iwelbo(p, q, 1, torch.float32)
        (_, rec), = kernels(launches, "reduce_tiles_kernel")
        assert rec["kernel"] == instantiation("reduce_tiles_kernel", torch.float32, vec, True)


# ---- the weights kernel ------------------------------------------------------


def grads_for(kind, out_shape, dtype):
    gen = torch.Generator().manual_seed(3)
    if kind == "contiguous":
        return torch.randn(out_shape, generator=gen).to(dtype)
    if kind == "expanded":  # the gradient of .sum(): one value, stride 0
        return torch.randn((), generator=gen).to(dtype).expand(out_shape)
    # strides that do not walk the outputs: copied once
    return torch.randn(out_shape[::-1], generator=gen).to(dtype).permute(
        *reversed(range(len(out_shape))))


@pytest.mark.parametrize("mask", [(True, True), (True, False), (False, True)],
                         ids=["both", "log_p-only", "log_q-only"])
@pytest.mark.parametrize("grad", ["contiguous", "expanded", "copied"])
@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weights_kernel(dtype, layout, grad, mask):
    # runs of 40: at least 4 vectors of every dtype (shorter dense runs take
    # weights_flat_kernel, test_weights_flat_kernel)
    shape, dim = ((6, 40, 3), 1) if layout == "rows" else ((6, 40, 40), 1)
    if layout == "rows":
        shape, dim = (6, 3, 40), 2
    p, q = inputs(shape, dtype)
    out_shape = list(shape)
    del out_shape[dim]
    g = grads_for(grad, out_shape, dtype)
    launches = check_iwelbo(p, q, dim, dtype, g=g, mask=mask)
    (args, _), = kernels(launches, "weights_kernel")
    assert args[3] == ("false" if layout == "rows" else "true")  # COLS


def check_weights_pass(p, q, dim, dtype, grads):
    """Every use of the weights pass on the emulated GPU against the CPU
    kernels: normalized_weights (no incoming gradient), the backward with
    each incoming gradient and each output mask, DReG's two corrections
    (with log_q). Returns the launches."""
    def run():
        _, stats = OPS._iwelbo_forward(p, q, dim, False, 0.0)
        res = [OPS.normalized_weights(p, q, dim)]
        for g in grads:
            for mask in ([True, True], [True, False], [False, True]):
                res += OPS.iwelbo_backward(g, stats, p, q, dim, False, 0.0, mask)
        if q is not None:
            for z_weight in ("dreg", "rws"):
                res += OPS.dreg_backward(grads[0], stats, p, q, dim, z_weight)
        return res

    emu, launches = run_emulated(run)
    for a, b in zip(emu, run()):
        close(a, b, dtype)
    return launches


@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("width", ["vector", "scalar"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weights_kernel_tails_masks_and_modes(dtype, width, with_q, layout):
    """Every weights-kernel instantiation with a partial last vector (one row
    of K = 37, or two rows of 37 columns: the only outputs 16-byte vectors
    leave a tail in), each output mask, the incoming gradient contiguous,
    expanded and absent (normalized_weights), and DReG's two corrections;
    against the CPU kernels. One row of columns (K = 1) takes
    weights_rows_kernel where no stats are given, so normalized_weights of
    columns runs on two rows of 40 as well."""
    dim = 1 if layout == "rows" else 0
    p, q = inputs((1, 37), dtype, with_q, seed=5)
    if width == "scalar":
        p = offset_view(p)
    out_shape = (1,) if layout == "rows" else (37,)
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(out_shape, generator=gen).to(dtype),  # contiguous
             torch.randn((), generator=gen).to(dtype).expand(out_shape),  # expanded
             offset_view(torch.randn(out_shape, generator=gen).to(dtype))]  # unaligned

    launches = check_weights_pass(p, q, dim, dtype, grads)
    vec = vec_width(dtype) if width == "vector" else 1
    weights = {r["kernel"] for _, r in kernels(launches, "weights_kernel")}
    assert weights == {instantiation("weights_kernel", dtype, vec, with_q, layout == "cols")}
    if layout == "cols":
        p2, q2 = inputs((2, 40), dtype, with_q, seed=5)
        p2 = offset_view(p2) if width == "scalar" else p2
        w, launches = run_emulated(lambda: OPS.normalized_weights(p2, q2, 0))
        close(w, OPS.normalized_weights(p2, q2, 0), dtype)
        assert kernels(launches, "weights_kernel")[0][1]["kernel"] == instantiation(
            "weights_kernel", dtype, vec, with_q, True)


FLAT = {  # layout -> (shape, dim): short dense runs, 15 elements (a partial last vector)
    "rows": ((5, 3), 1),
    "cols": ((3, 5), 0),
}


@pytest.mark.parametrize("layout", list(FLAT))
@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weights_flat_kernel(dtype, with_q, layout):
    """The weights pass over short runs stored densely (K = 3 rows, or rows
    of 5 columns): one flat run of vectors spanning runs, for every dtype,
    with and without log_q; a partial last vector, each output mask, the
    incoming gradient contiguous, expanded and absent, DReG's corrections;
    against the CPU kernels. An unaligned or non-dense layout keeps
    weights_kernel."""
    shape, dim = FLAT[layout]
    p, q = inputs(shape, dtype, with_q, seed=6)
    out_shape = [s for d, s in enumerate(shape) if d != dim]
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(out_shape, generator=gen).to(dtype),  # contiguous
             torch.randn((), generator=gen).to(dtype).expand(out_shape)]  # expanded

    launches = check_weights_pass(p, q, dim, dtype, grads)
    weights = {r["kernel"] for _, r in kernels(launches, "weights_flat_kernel")}
    assert weights == {instantiation("weights_flat_kernel", dtype, with_q, layout == "rows")}
    assert not kernels(launches, "weights_kernel")
    # Off alignment: the per-run kernel's scalar path.
    (_, stats), launches = run_emulated(lambda: OPS._iwelbo_forward(offset_view(p), q, dim, False, 0.0))
    _, launches = run_emulated(lambda: OPS.iwelbo_backward(grads[0], stats, offset_view(p), q, dim,
                                                           False, 0.0, [True, True]))
    assert not kernels(launches, "weights_flat_kernel") and kernels(launches, "weights_kernel")


NOT_SAVED = {torch.float64: torch.empty(0, dtype=torch.float64)}  # stats of shape [0]


def not_saved(dtype):
    return NOT_SAVED.get(dtype, torch.empty(0, dtype=torch.float32))


def rows_with_specials(shape, dtype, with_q, seed):
    """Rows [.., K] with an all -inf row, a +inf beside a finite sample large
    enough to overflow exp with the row's shift of 0, and a NaN."""
    p, q = inputs(shape, dtype, with_q, seed=seed)
    flat = p.view(-1, shape[-1])
    flat[0] = -math.inf
    flat[1, 0] = math.inf
    if shape[-1] > 1:
        flat[1, 1] = 300.0
    flat[2, -1] = math.nan
    return p, q


def check_recomputed(p, q, dim, dtype, grads, device=None):
    """The backward op given stats of shape [0] (not saved) on the emulated
    GPU, each incoming gradient and output mask, and normalized_weights:
    against the backward from saved stats on the CPU kernels. Returns the
    launches."""
    def run(stats):
        res = [OPS.normalized_weights(p, q, dim)]
        for g in grads:
            for mask in ([True, True], [True, False], [False, True]):
                res += OPS.iwelbo_backward(g, stats, p, q, dim, False, 0.0, mask)
        return res

    emu, launches = run_emulated(lambda: run(not_saved(dtype)), **(device or {}))
    for a, b in zip(emu, run(OPS._iwelbo_forward(p, q, dim, False, 0.0)[1])):
        close(a, b, dtype)
    return launches


@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weights_rows_kernel(dtype, with_q):
    """Rows that fit a 16-byte vector (every K dividing it): the training step
    saves no stats and its backward recomputes them in one launch of
    weights_rows_kernel; the backward op given stats of shape [0] with the
    incoming gradient contiguous, expanded and absent (normalized_weights:
    one launch), each output mask, rows over an inner axis, a partial last
    vector, an all -inf row, +inf and NaN; against the CPU kernels from saved
    stats and the float64 reference. Off alignment the stats are computed
    first by a reduction."""
    vec = vec_width(dtype)
    for K in (k for k in (1, 2, 4, 8) if vec % k == 0):
        for shape in ((13, K), "rows:3,5,%d" % K):
            dim = 1
            if isinstance(shape, str):  # [3, K, 5] stored as [3, 5, K]
                p, q = loop_inputs(shape, dtype, seed=K)
            else:
                p, q = rows_with_specials(shape, dtype, with_q, seed=K)
            q = q if with_q else None
            out_shape = [s for d, s in enumerate(p.shape) if d != dim]
            gen = torch.Generator().manual_seed(K)
            grads = [torch.randn(out_shape, generator=gen).to(dtype),
                     torch.randn((), generator=gen).to(dtype).expand(out_shape)]
            launches = check_recomputed(p, q, dim, dtype, grads)
            assert {r["kernel"] for r in launches} == {instantiation("weights_rows_kernel", dtype, with_q)}
            assert len(launches) == 7  # one per call: normalized_weights, 6 backwards
            if isinstance(shape, str):
                continue  # autograd recomputes only for contiguous rows (saved_stats.h)

            # The training step through autograd: a reduction and the rows kernel.
            def step():
                pp = p.clone().requires_grad_()
                qq = q.clone().requires_grad_() if with_q else None
                out = iwae_fused.iwelbo(pp, qq, dim=dim)
                out.backward(grads[0])
                return out.detach(), pp.grad, None if qq is None else qq.grad

            emu, launches = run_emulated(step)
            names = [r["kernel"].split("<")[0] for r in launches]
            assert len(names) == 2 and names[1] == "weights_rows_kernel", names
            cpu = step()
            # The reference's own autograd makes an all -inf row's gradient
            # NaN (the kernels give 0): the special rows against the CPU only.
            r_out, r_gp, r_gq = reference(p[3:], None if q is None else q[3:], dim, grads[0][3:])
            close(emu[0][3:], r_out, dtype)
            close(emu[1][3:], r_gp, dtype)
            for a, b in zip(emu, cpu):
                if a is not None:
                    close(a, b, dtype)
            if with_q:
                close(emu[2][3:], r_gq, dtype)
    # One block (a toy device): later passes, each with two whole vectors.
    p, q = rows_with_specials((300 * vec, 2), dtype, with_q, seed=2)
    q = q if with_q else None
    g = torch.randn(300 * vec, generator=torch.Generator().manual_seed(3)).to(dtype)
    launches = check_recomputed(p, q, 1, dtype, [g], device=dict(max_grid_x=1))
    assert all(r["grid"][0] == 1 for r in launches)
    # Off alignment: the stats from a reduction first, then the stats kernels.
    p, q = rows_with_specials((13, 2), dtype, with_q, seed=1)
    q = q if with_q else None
    launches = check_recomputed(offset_view(p), q, 1, dtype, [torch.ones(13, dtype=dtype)])
    assert not kernels(launches, "weights_rows_kernel")
    assert kernels(launches, "reduce_tiles_kernel") or kernels(launches, "reduce_rows_kernel")


def test_stats_not_saved_only_where_recomputed():
    """The emulated GPU's training step saves no stats for rows that fit a
    vector, and saves them (one more launch's worth of bytes, read by the
    stats kernels) for K = 3, columns, broadcast log_q, the ELBO and alpha
    near 1; outside the emulator (the CPU) it always saves them."""
    def names(p, q, dim, alpha=0.0):
        def step():
            pp = p.clone().requires_grad_()
            out = iwae_fused.iwelbo(pp, q, dim=dim, alpha=alpha)
            out.sum().backward()
        _, launches = run_emulated(step)
        return [r["kernel"].split("<")[0] for r in launches]

    p = torch.randn(40, 4)
    assert names(p, torch.randn(40, 4), 1)[-1] == "weights_rows_kernel"
    assert names(p, None, 1, alpha=0.5)[-1] == "weights_rows_kernel"
    for q, dim, alpha in ((None, 0, 0.0), (torch.randn(1, 4), 1, 0.0), (None, 1, 0.9)):
        assert "weights_rows_kernel" not in names(p, q, dim, alpha)
    assert "weights_rows_kernel" not in names(torch.randn(40, 3), None, 1)
    # log_q broadcast to more dims than log_p has: dim is the broadcast's
    assert "weights_rows_kernel" not in names(torch.randn(4), torch.randn(3, 4), 1)
    assert not iwae_fused._C._cpu_stands_for_gpu()
    with cuda_emulator.emulated():
        assert iwae_fused._C._cpu_stands_for_gpu()
    assert not iwae_fused._C._cpu_stands_for_gpu()


@pytest.mark.parametrize("z_weight", ["dreg", "rws", "stl"])
@pytest.mark.parametrize("layout", ["rows", "cols"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dreg_weightings(dtype, layout, z_weight):
    """DReG's fused backward (the z-path correction in the weights kernel's
    log_q output) through the public op and its autograd."""
    shape, dim = ((8, 33), 1) if layout == "rows" else ((33, 8), 0)
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    eps = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    def run():
        z = mu + eps
        log_q = -0.5 * (z - mu.detach()) ** 2
        log_p = -0.5 * z**2 - 0.1 * mu
        bound = iwae_fused.dreg(log_p, log_q, z, dim=dim, z_weight=z_weight)
        (g,) = torch.autograd.grad(bound.sum(), mu)
        return bound.detach(), g

    (b, g), launches = run_emulated(run)
    c_b, c_g = run()
    close(b, c_b, dtype)
    close(g, c_g, dtype, scale=4.0)
    m64 = mu.detach().double().requires_grad_()
    z = m64 + eps.double()
    ref = R.dreg(-0.5 * z**2 - 0.1 * m64, -0.5 * (z - m64.detach()) ** 2, z, dim, z_weight)
    (r_g,) = torch.autograd.grad(ref.sum(), m64)
    close(g, r_g, dtype, scale=4.0)
    if z_weight != "stl":  # rows of 8 float32/16: the flat walk
        assert kernels(launches, "weights_kernel") or kernels(launches, "weights_flat_kernel")


# ---- special values ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["rows-warp-splitk", "cols-splitk"])
def test_special_values_with_splitk(path, dtype):
    """A split-K piece all -inf, an all -inf slice, +inf, NaN at pack lane 0
    and at another lane: bound, stats and gradients as on the CPU."""
    shape, dim = PATHS[path][:2]
    p, _ = inputs(shape, dtype)
    x = p.movedim(dim, -1)  # [B, K] view
    K = x.shape[-1]
    x[0, : K // 2] = -math.inf  # at least one whole K piece
    x[1, :] = -math.inf  # an all -inf slice
    x[2, 5] = math.inf
    if x.shape[0] > 3:
        x[3, 0] = math.nan  # pack lane 0
        x[4, 6] = math.nan  # another lane
    g = torch.ones(x.shape[0], dtype=dtype)
    (out, stats, gp, _), launches = run_emulated(lambda: fwd_bwd(p, None, dim, g))
    c_out, c_stats, c_gp, _ = fwd_bwd(p, None, dim, g)
    torch.testing.assert_close(out, c_out, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(stats, c_stats, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(gp, c_gp, equal_nan=True, **TOL[dtype])
    assert out[1] == -math.inf and (gp.movedim(dim, -1)[1] == 0).all()
    assert out[2] == math.inf
    assert kernels(launches, "merge_kernel")


@pytest.mark.parametrize("lane", [0, 3])
@pytest.mark.parametrize("layout", ["rows", "cols", "tiles"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_a_pack_same_stats_as_cpu(dtype, layout, lane):
    """Defect 2: the CUDA pack maximum started from x[0], so a NaN in lane 0
    became the running max; the rule (NaN ignored in the max) is now one
    helper in online_lse.h. The shift in the stats must equal the CPU's."""
    shape, dim = {"rows": ((4, 72), 1), "cols": ((72, 4 * vec_width(dtype)), 0),
                  "tiles": ((4, 32), 1)}[layout]
    p, _ = inputs(shape, dtype)
    p.movedim(dim, -1)[1, 8 + lane] = math.nan
    emu, _ = run_emulated(lambda: OPS.logsumexp_stats(p, None, dim))
    cpu = OPS.logsumexp_stats(p, None, dim)
    torch.testing.assert_close(emu, cpu, equal_nan=True, **TOL[dtype])
    assert not emu[0].isnan().any(), "the shift ignores NaN on both backends"
    assert emu[1, 1].isnan()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0, -1.0], ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_renyi_and_large_magnitudes(layout, alpha, dtype):
    """Renyi orders (beta = 1 - alpha negative for alpha = 2) and log-weights
    of magnitude 1e30 (float32 and float64; halves cannot hold them)."""
    shape, dim = ((8, 40), 1) if layout == "rows" else ((40, 8), 0)
    p, q = inputs(shape, dtype)
    check_iwelbo(p, q, dim, dtype, alpha=alpha)
    if dtype in (torch.float32, torch.float64):
        big = (p.double() * 1e25 + 1e30).to(dtype)
        check_iwelbo(big, None, dim, dtype, alpha=alpha)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [
    pytest.param("empty-batch", marks=pytest.mark.no_launch("no outputs: nothing to launch")),
    "K=1", "0-dim", "K=1-cols"])
def test_degenerate_shapes(case, dtype):
    shape, dim = {"empty-batch": ((0, 5), 1), "K=1": ((7, 1), 1), "0-dim": ((), 0),
                  "K=1-cols": ((1, 7), 0)}[case]
    p, q = inputs(shape, dtype)
    launches = check_iwelbo(p, q, dim, dtype)
    assert bool(launches) == (case != "empty-batch")


# ---- every loop's second and later passes --------------------------------------
# Grid caps come from the device (max_grid_x, sm_count, max_grid_y/z), so a toy
# device sends every grid-stride and tile loop through several passes with
# small shapes. Each case: (op, shape, dim, device, the kernel whose loop it
# drives, a predicate on that kernel's launch record: the loop took a second
# pass). The values are checked against float64 and the CPU kernels, so a
# loop whose later passes are broken (a wrong carry, a missing barrier
# before shared memory is reused) fails here; tests/README.md lists which
# case drives which loop.


def beyond(work, per_block, axis=0):
    """More work items than one pass of the grid along `axis` covers."""
    return lambda r: work > per_block * r["grid"][axis]


LOOPS = {
    # reduce_rows_kernel: rows beyond grid.x (a warp per row, 8 per block)
    "rows-warp-rows": ("iwelbo", (40, 104), 1, dict(max_grid_x=2), "reduce_rows_kernel",
                       beyond(40, 8)),
    # a block per row: its shared memory reused by the next row (after a barrier)
    "rows-block-rows": ("iwelbo", (5, 4100), 1, dict(max_grid_x=2), "reduce_rows_kernel",
                        beyond(5, 1)),
    "rows-block-rows-splitk": ("iwelbo", (3, 33000), 1, dict(max_grid_x=2), "reduce_rows_kernel",
                               lambda r: r["grid"][1] > 1 and 3 > r["grid"][0]),
    # reduce_cols_kernel: outer slices beyond grid.z, shared memory reused per slice
    "cols-outer": ("iwelbo", (10, 72, 8), 1, dict(max_grid_z=3), "reduce_cols_kernel",
                   beyond(10, 1, axis=2)),
    # reduce_tiles_kernel: tiles beyond grid.x, the tile reused (after a barrier)
    "tiles-rows": ("iwelbo", (9000, 8), 1, dict(max_grid_x=2), "reduce_tiles_kernel",
                   beyond(9000 * 8, 4096)),
    "tiles-cols": ("iwelbo", (15, 8, 200), 1, dict(max_grid_x=2), "reduce_tiles_kernel",
                   beyond(15, 2)),
    # merge_kernel (a warp per output, 8 per block): outputs beyond grid.x,
    # and on the H100 many blocks
    # (K = 1100: two pieces of the column kernel's 32-row blocks)
    "merge-outputs": ("iwelbo", (3, 1100, 64), 1, dict(max_grid_x=2), "merge_kernel",
                      beyond(192, 8)),
    "merge-many-blocks": ("iwelbo", (3, 1100, 64), 1, {}, "merge_kernel",
                          lambda r: r["grid"][0] == 192 // 8),
    # weights_kernel's grid-stride walk, its (outer, run, vector) digits
    # carried; rows: runs are the geometry's inner positions, K-vectors within
    # (float32: 10 vectors per run, stride 256: every digit carries; 100:
    # the run digit carries into outer; 500: the vector digit alone moves)
    "weights-rows-all-digits": ("grad", "rows:30,3,40", 1, dict(max_grid_x=1), "weights_kernel",
                                beyond(30 * 3 * 40 / 4, 256)),
    "weights-rows-run-carry": ("grad", "rows:6,3,400", 1, dict(max_grid_x=1), "weights_kernel",
                               beyond(6 * 3 * 400 / 4, 256)),
    "weights-rows-long-runs": ("grad", "rows:2,2,2000", 1, dict(max_grid_x=1), "weights_kernel",
                               beyond(2 * 2 * 2000 / 4, 256)),
    # columns: runs are (outer, k), vectors along the inner axis
    "weights-cols-all-digits": ("grad", (30, 5, 40), 1, dict(max_grid_x=1), "weights_kernel",
                                beyond(30 * 5 * 40 / 4, 256)),
    # the flat walk over short dense runs: rows [outer, K], rows [outer,
    # inner, K] (K fastest), columns [outer, K, inner]; every digit carries
    "weights-flat-rows": ("grad", (1500, 3), 1, dict(max_grid_x=1), "weights_flat_kernel",
                          beyond(1500 * 3 / 8, 256)),
    "weights-flat-rows-inner": ("grad", "rows:150,3,5", 1, dict(max_grid_x=1), "weights_flat_kernel",
                                beyond(150 * 3 * 5 / 8, 256)),
    "weights-flat-cols": ("grad", (300, 4, 5), 1, dict(max_grid_x=1), "weights_flat_kernel",
                          beyond(300 * 4 * 5 / 8, 256)),
    # rows that fit a vector, stats recomputed: [outer, inner, K = 2] (float32:
    # 2 rows per vector, float16: 4), two vectors per thread per pass
    "weights-rows-recomputed": ("recompute", "rows:1200,3,2", 1, dict(max_grid_x=1),
                                "weights_rows_kernel", beyond(1200 * 3 * 2 / 8, 2 * 256)),
    "weights-cols-long-runs": ("grad", (3, 12, 1000), 1, dict(max_grid_x=8), "weights_kernel",
                               beyond(3 * 12 * 1000 / 8, 256)),
    # VIMCO
    "vimco-tiles": ("vimco", (1500, 8), 1, dict(max_grid_x=1), "vimco_tiles_kernel",
                    beyond(1500, 512)),
    "vimco-rows": ("vimco", (20, 70), 1, dict(max_grid_x=2), "vimco_rows_kernel", beyond(20, 4)),
    "vimco-merge-examples": ("vimco", (9, 600), 1, dict(max_grid_x=1), "vimco_merge_kernel",
                             beyond(9, 4)),
    # 33 pieces: lane 0 of the merge's warp takes pieces 0 and 32
    "vimco-merge-pieces": ("vimco", (1, 8448), 1, {}, "vimco_rows_kernel",
                           lambda r: r["grid"][1] > 32),
    "vimco-cols": ("vimco", (6, 300), 0, dict(max_grid_x=1), "vimco_cols_kernel", beyond(300, 128)),
    "vimco-backward": ("vimco", (6, 300), 0, dict(max_grid_x=1), "vimco_backward_kernel",
                       beyond(1800, 128)),
}


def loop_inputs(shape, dtype, seed):
    """Inputs for LOOPS: "rows:O,I,K" is an [O, K, I] tensor stored with K
    fastest (so the kernels take it as rows with an inner size I > 1)."""
    if isinstance(shape, str):
        o, i, k = map(int, shape.split(":")[1].split(","))
        p, q = inputs((o, i, k), dtype, seed=seed)
        return p.transpose(1, 2), q.transpose(1, 2)
    return inputs(shape, dtype, seed=seed)


@pytest.mark.parametrize("order", ["xyz", "shuffled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(LOOPS))
def test_loop_later_passes(case, dtype, order):
    op, shape, dim, device, kernel, reaches = LOOPS[case]
    p, q = loop_inputs(shape, dtype, seed=seed_of(case))
    device = dict(device, block_order=order, seed=seed_of(case))
    if op == "vimco":
        out_shape = [s for d, s in enumerate(p.shape) if d != dim]
        g = torch.randn(out_shape, generator=torch.Generator().manual_seed(2)).to(dtype)

        def run():
            out, state = OPS._vimco_forward(p, q, dim, False)
            return (out, state) + tuple(OPS.vimco_backward(g, state, p, q, dim, False, [True, True]))

        emu, launches = run_emulated(run, **device)
        for a, b in zip(emu, run()):  # the CPU kernels (the reference's signals are O(K^2))
            close(a, b, dtype, scale=4.0)
        lw = p.double() - q.double()
        close(emu[0], torch.logsumexp(lw, dim) - math.log(lw.shape[dim]), dtype)
    elif op == "recompute":
        out_shape = [s for d, s in enumerate(p.shape) if d != dim]
        g = torch.randn(out_shape, generator=torch.Generator().manual_seed(2)).to(dtype)
        launches = check_recomputed(p, q, dim, dtype, [g], device=device)
    else:
        launches = check_iwelbo(p, q, dim, dtype, device=device)
    recs = [r for _, r in kernels(launches, kernel)]
    assert recs, f"{kernel} ran"
    assert all(r["block_order"] == order for r in launches)
    assert any(reaches(r) for r in recs), "the loop took a second pass"


def test_column_blocks_beyond_the_device_grid_x_are_refused():
    """The column kernel has no loop over grid.x (no GPU's 2^31 - 1 blocks
    run out); a toy device with fewer is refused by name, not overrun."""
    p = torch.randn(100, 300)  # 75 vectors of columns: 3 blocks of 25
    with pytest.raises(RuntimeError, match=r"the column reduction over 300 columns needs 3 blocks "
                                           r"along grid.x, more than the device's limit of 2"):
        run_emulated(lambda: OPS.iwelbo(p, None, 0), max_grid_x=2)
    run_emulated(lambda: OPS.iwelbo(p, None, 0), max_grid_x=3)


# ---- full-size shapes on the H100 profile ------------------------------------


@pytest.mark.parametrize("case", ["eval-rows-1024x5000", "eval-cols-5000x100", "B1-K100000",
                                  "B1-K1100000", "vimco-B1-K100000"])
def test_full_size_shapes(case):
    """Shapes users run, on the emulated H100: [1024, 5000] over dim 1 (a
    block per row; the weights kernel's grid-stride walk carries past
    132 x 32 blocks of 256 vectors), the evaluation columns [5000, 100] over
    dim 0, and one example with K = 1e5 (split-K and the merge) or 1.1e6
    (134 pieces: the merge's lanes take a second step of four pieces)."""
    dtype = torch.float32
    if case == "vimco-B1-K100000":
        p, q = inputs((1, 100000), dtype)
        g = torch.ones(1)

        def run():
            out, state = OPS._vimco_forward(p, q, 1, False)
            return (out,) + tuple(OPS.vimco_backward(g, state, p, q, 1, False, [True, True]))

        emu, launches = run_emulated(run)
        for a, b in zip(emu, run()):  # the CPU kernels (the reference's signals are O(K^2))
            close(a, b, dtype, scale=4.0)
        lw = p.double() - q.double()
        close(emu[0], torch.logsumexp(lw, 1) - math.log(lw.shape[1]), dtype)
        (_, rec), = kernels(launches, "vimco_rows_kernel")
        assert rec["grid"][1] > 32 and kernels(launches, "vimco_merge_kernel")
        return
    shape, dim = {"eval-rows-1024x5000": ((1024, 5000), 1), "eval-cols-5000x100": ((5000, 100), 0),
                  "B1-K100000": ((1, 100000), 1), "B1-K1100000": ((1, 1100000), 1)}[case]
    p, q = inputs(shape, dtype)
    launches = check_iwelbo(p, q, dim, dtype)
    (_, w), = kernels(launches, "weights_kernel")
    if case == "eval-rows-1024x5000":
        assert w["grid"][0] == 132 * 32 and 1024 * 5000 / 4 > w["grid"][0] * 256, "the walk carries"
        assert kernels(launches, "reduce_rows_kernel")[0][0][2] == "256"
    if case.startswith("B1-"):
        (_, merge), = kernels(launches, "merge_kernel")
        if case == "B1-K1100000":
            assert merge["int_args"][0] > 4 * 32, "more pieces than one step of the warp's lanes"


# ---- VIMCO -----------------------------------------------------------------


FULL_WAVE = {  # a 1-SM device's wave filled by the outputs alone: K stays whole
    "rows": ((400, 104), 1, "reduce_rows_kernel", (32,)),
    "cols": ((40, 4096), 0, "reduce_cols_kernel", ()),
}


@pytest.mark.parametrize("aligned", [True, False], ids=["vector", "scalar"])
@pytest.mark.parametrize("with_q", [True, False], ids=["log_q", "no_log_q"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", list(FULL_WAVE))
def test_full_wave_keeps_K_whole(family, dtype, with_q, aligned):
    """Where the outputs' blocks alone fill a wave of resident blocks, the
    planner never splits K, for every instantiation of the row and column
    reductions (the vector and the scalar loads, with and without log_q)."""
    shape, dim, kernel, extra = FULL_WAVE[family]
    p, q = inputs(shape, dtype, with_q, seed=5)
    launches = check_iwelbo(p if aligned else offset_view(p), q, dim, dtype, device=dict(sm_count=1))
    (_, rec), = kernels(launches, kernel)
    vec = vec_width(dtype) if aligned else 1
    assert rec["kernel"] == instantiation(kernel, dtype, vec, *extra, with_q)
    assert rec["grid"][1] == 1 and not kernels(launches, "merge_kernel")


VIMCO_PATHS = {  # shape, dim, forward kernel, split-K
    "rows-tiles": ((70, 45), 1, "vimco_tiles_kernel", False),
    "rows-tiles-multi": ((200, 33), 1, "vimco_tiles_kernel", False),
    "rows-warp": ((6, 70), 1, "vimco_rows_kernel", False),
    "rows-splitk": ((1, 600), 1, "vimco_rows_kernel", True),
    "cols-thread": ((45, 6), 0, "vimco_cols_kernel", False),
    "middle-dim": ((3, 9, 4), 1, "vimco_cols_kernel", False),
}


@pytest.mark.parametrize("special", ["finite", "ties-and-infs"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", list(VIMCO_PATHS))
def test_vimco(path, dtype, special):
    shape, dim, kernel, split = VIMCO_PATHS[path]
    p, q = inputs(shape, dtype)
    if special != "finite":  # tied maxima across lanes and pieces, -inf samples
        x = p.movedim(dim, -1)
        x[..., 3] = 40.0
        x[..., -2] = 40.0
        x[..., 1] = -math.inf
        q.movedim(dim, -1)[..., 3] = 0.0
        q.movedim(dim, -1)[..., -2] = 0.0
    out_shape = [s for d, s in enumerate(shape) if d != dim]
    g = torch.randn(out_shape, generator=torch.Generator().manual_seed(2)).to(dtype)

    def run():
        out, state = OPS._vimco_forward(p, q, dim, False)
        gp, gq = OPS.vimco_backward(g, state, p, q, dim, False, [True, True])
        return out, state, gp, gq

    emu, launches = run_emulated(run)
    cpu = run()
    for a, b in zip(emu, cpu):
        close(a, b, dtype, scale=4.0)
    close(emu[0], R.vimco(p.double(), q.double(), dim), dtype)
    p64, q64 = p.double().requires_grad_(), q.double().requires_grad_()
    R.vimco(p64, q64, dim).backward(g.double())
    close(emu[2], p64.grad, dtype)
    close(emu[3], q64.grad, dtype, scale=4.0)
    (_, rec), = kernels(launches, kernel)
    assert (rec["grid"][1] > 1) == split
    assert bool(kernels(launches, "vimco_merge_kernel")) == split
    assert kernels(launches, "vimco_backward_kernel")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", ["lone-finite", "all-equal"])
@pytest.mark.parametrize("path", ["rows-tiles", "rows-warp", "rows-splitk", "cols-thread"])
def test_vimco_degenerate_others(path, case, dtype):
    """The any-gap state at its edges, on every forward path: one finite
    sample and the rest -inf (the others' pair empty in every lane and every
    piece of K: log-sum of nothing, the argmax's signal +inf), and all samples
    equal (the others' mean exactly the max). Against the CPU kernels, and
    the bound against its closed form."""
    shape, dim, kernel, split = VIMCO_PATHS[path]
    p, q = inputs(shape, dtype)
    q.zero_()
    x = p.movedim(dim, -1)
    K = x.shape[-1]
    if case == "lone-finite":
        x[...] = -math.inf
        x[..., 0] = 5.0
    else:
        x[...] = 0.5
    out_shape = [s for d, s in enumerate(shape) if d != dim]
    g = torch.ones(out_shape, dtype=dtype)

    def run():
        out, state = OPS._vimco_forward(p, q, dim, False)
        gp, gq = OPS.vimco_backward(g, state, p, q, dim, False, [True, True])
        return out, state, gp, gq

    emu, launches = run_emulated(run)
    cpu = run()
    for a, b in zip(emu, cpu):
        torch.testing.assert_close(a, b, equal_nan=True, **TOL[dtype])
    bound = 5.0 - math.log(K) if case == "lone-finite" else 0.5
    torch.testing.assert_close(emu[0], torch.full(out_shape, bound, dtype=dtype), **TOL[dtype])
    if case == "lone-finite":  # dropping the lone sample leaves no weight
        assert torch.isinf(emu[3].movedim(dim, -1)[..., 0]).all()
    else:  # every leave-one-out bound equals the bound: no signal
        p64, q64 = p.double().requires_grad_(), q.double().requires_grad_()
        R.vimco(p64, q64, dim).backward(g.double())
        close(emu[2], p64.grad, dtype)
        close(emu[3], q64.grad, dtype)
    (_, rec), = kernels(launches, kernel)
    assert (rec["grid"][1] > 1) == split


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["rows-tiles", "rows-warp", "rows-splitk", "cols-thread"])
def test_vimco_nan_empty_examples_and_masks(path, dtype):
    """An example with a NaN sample (NaN bound and gradients, in the per-lane
    states, their shuffle merges and the pieces' merge) and an example whose
    samples are all -inf (bound -inf, zero gradients), on every forward
    path; the backward with each output mask. Against the CPU kernels."""
    shape, dim, kernel, _ = VIMCO_PATHS[path]
    p, q = inputs(shape, dtype)
    clean = p.clone()
    x = p.movedim(dim, -1)
    x[0, 5] = math.nan
    if x.shape[0] > 1:
        x[1, :] = -math.inf
    out_shape = [s for d, s in enumerate(shape) if d != dim]
    g = torch.randn(out_shape, generator=torch.Generator().manual_seed(2)).to(dtype)

    def run():
        out, state = OPS._vimco_forward(p, q, dim, False)
        res = [out, state]
        for mask in ([True, True], [True, False], [False, True]):
            res += OPS.vimco_backward(g, state, p, q, dim, False, mask)
        # a NaN sample against a state without it (log_p changed in between):
        # still NaN, never a number
        res += OPS.vimco_backward(g, OPS._vimco_forward(clean, q, dim, False)[1], p, q, dim, False,
                                  [True, True])
        return res

    emu, launches = run_emulated(run)
    cpu = run()
    # A NaN example's state is NaN in its max; its other words are left as
    # the NaN found them, which differs with the order samples were absorbed
    # in (and nothing reads them: every signal of that example is NaN).
    nan = emu[1][0].isnan()
    assert torch.equal(nan, cpu[1][0].isnan()) and nan.any()
    emu[1][1:, nan] = cpu[1][1:, nan] = 0
    # The last backward's state does not belong to its inputs (row 1 was
    # finite when it was saved, now all -inf): only the NaN example's NaNs are
    # defined there, and the backends may differ elsewhere (the CPU lanes take
    # the argmax's own log-weight from the state, the CUDA kernels from log_p).
    for a, b in zip(emu[:-2], cpu[:-2]):
        torch.testing.assert_close(a, b, equal_nan=True, **TOL[dtype])
    assert emu[0].movedim(0, -1).reshape(-1)[0].isnan()
    assert emu[-2].movedim(dim, -1)[0, 5].isnan() and emu[-1].movedim(dim, -1)[0, 5].isnan()
    if x.shape[0] > 1:
        assert emu[0].reshape(-1)[1] == -math.inf
    assert kernels(launches, kernel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("path", ["rows-warp", "rows-warp-splitk", "cols-one-piece", "cols-splitk",
                                  "tiles-rows-K64"])
def test_diagnostics_of_special_slices(path, dtype):
    """ESS and the largest weight of an all -inf slice (0 and 0: no weight to
    spread), of a slice with +inf and one with NaN, on each reduction path."""
    shape, dim, kernel = PATHS[path][:3]
    p, q = inputs(shape, dtype)
    x = p.movedim(dim, -1)
    x[0, :] = -math.inf
    x[1, 3] = math.inf
    x[2, 7] = math.nan
    emu, launches = run_emulated(lambda: OPS.weight_diagnostics(p, q, dim))
    cpu = OPS.weight_diagnostics(p, q, dim)
    for a, b in zip(emu, cpu):
        torch.testing.assert_close(a, b, equal_nan=True, **TOL[dtype])
    assert emu[0][0] == 0 and emu[1][0] == 0
    assert kernels(launches, kernel)


def test_autograd_training_step_runs_on_the_emulated_gpu():
    """The public API end to end: iwae_fused's C++ autograd calls the forward
    and backward ops, both of which run emulated."""
    p, q = inputs((50, 128), torch.float32)  # the training shape [K=50, B=128]
    p.requires_grad_()
    q.requires_grad_()

    def step():
        loss = -iwae_fused.iwelbo(p, q).mean()
        return torch.autograd.grad(loss, (p, q))

    (gp, gq), launches = run_emulated(step)
    c_gp, c_gq = step()
    close(gp, c_gp, torch.float32)
    close(gq, c_gq, torch.float32)
    assert kernels(launches, "reduce_cols_kernel") and kernels(launches, "weights_kernel")


# ---- random cases, as in test_against_reference, on the emulated GPU ---------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from test_against_reference import as64, cases, make_inputs  # noqa: E402


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases())
def test_random_cases_against_reference(c):
    """Random shapes, dims, dtypes, layouts, broadcasts and alphas: values
    and both gradients on the emulated GPU against float64, and against the
    CPU kernels."""
    def run():
        p, q = make_inputs(c, requires_grad=True)
        out = iwae_fused.iwelbo(p, q, dim=c["dim"], keepdim=c["keepdim"], alpha=c["alpha"])
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(c["seed"] + 1)).to(out.dtype)
        grads = torch.autograd.grad(out, [t for t in (p, q) if t is not None], g)
        return p, q, g, out.detach(), grads

    (p, q, g, out, grads), launches = run_emulated(run)
    _, _, _, c_out, c_grads = run()
    p64 = as64(p).requires_grad_()
    q64 = as64(q).requires_grad_() if q is not None else None
    ref = R.iwelbo(p64, q64, dim=c["dim"], keepdim=c["keepdim"], alpha=c["alpha"])
    r_grads = torch.autograd.grad(ref, [t for t in (p64, q64) if t is not None], g.double())
    amp = 1.0 if c["alpha"] == 1.0 else max(1.0, 1.0 / abs(1.0 - c["alpha"]))
    close(out, ref, c["dtype"], scale=amp * (1 + ref.abs().max().item()))
    close(out, c_out, c["dtype"], scale=amp * (1 + ref.abs().max().item()))
    for a, b, r in zip(grads, c_grads, r_grads):
        close(a, r, c["dtype"], scale=1 + g.abs().max().item())
        close(a, b, c["dtype"], scale=1 + g.abs().max().item())
    if out.numel() and c["alpha"] != 1.0 and abs(1.0 - c["alpha"]) >= 0.25:
        assert launches, "the kernels ran on the emulated GPU"
    dtype_name = instantiation("k", c["dtype"]).split("<")[1].rstrip(">")
    for r in launches:  # every kernel of this case's dtype, with log_q iff given
        args = r["kernel"].split("<")[1].rstrip(">").split(", ")
        assert args[0] == dtype_name, r["kernel"]
        if not r["kernel"].startswith("merge_kernel"):
            flag_last = not r["kernel"].startswith("weights") or r["kernel"].startswith("weights_rows")
            has_q = args[-1] if flag_last else args[-2]
            assert has_q == ("true" if q is not None else "false"), r["kernel"]


# ---- every kernel instantiation is launched by an explicit test ---------------

# Random cases cover paths by chance: they do not count here.
RANDOM_TESTS = {"test_random_cases_against_reference"}


@pytest.mark.no_launch("a census of the launches of the tests before it")
def test_every_kernel_instantiation_is_launched(request):
    """Every instantiation the CUDA host code can launch (registered by the
    launch template at load, so the list comes from the dispatch code: every
    dtype, vector width, layout and log_q branch) was launched by some
    explicit test of this module (the test ids of tests/README.md). Runs last
    in the module and only when the whole module ran."""
    module_tests = {i.nodeid for i in request.node.parent.collect()} - {request.node.nodeid}
    not_run = module_tests - CENSUS.keys()
    if not_run:
        pytest.skip(f"{len(not_run)} tests of this module did not run: the census needs them all")
    every = cuda_emulator.instantiations()
    assert len(every) >= 124
    never = never_launched(CENSUS, module_tests, every, RANDOM_TESTS)
    assert not never, f"{len(never)} of {len(every)} kernel instantiations never launched: {never}"
