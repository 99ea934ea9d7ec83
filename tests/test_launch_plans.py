"""Launch shapes that fill the GPU (benchmarks/GPU-MODEL.md): split-K sized
to one wave of resident blocks as the device's occupancy gives them, and the
loads kept in flight by the row and column reductions (two steps of a row,
a whole step of column rows), each path against the float64 reference and
the CPU kernels, with the launch log asserting which path ran."""

import pytest
import torch

from iwae_fused import reference as R

from conftest import DTYPES, close, log_weights_like
from emulated import OPS, kernels, pytestmark, run_emulated, vec_width  # noqa: F401


def inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (log_weights_like(shape, dtype, "cpu", gen=gen),
            log_weights_like(shape, dtype, "cpu", scale=1.0, gen=gen))


def fwd_bwd(p, q, dim, g):
    out, stats = OPS._iwelbo_forward(p, q, dim, False, 0.0)
    gp, gq = OPS.iwelbo_backward(g, stats, p, q, dim, False, 0.0, [True, True])
    return out, stats, gp, gq


def check(shape, dim, dtype, **device):
    p, q = inputs(shape, dtype)
    out_shape = [s for i, s in enumerate(shape) if i != dim]
    g = torch.randn(out_shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    (out, stats, gp, gq), launches = run_emulated(lambda: fwd_bwd(p, q, dim, g), **device)
    c_out, c_stats, c_gp, c_gq = fwd_bwd(p, q, dim, g)
    p64, q64 = p.double().requires_grad_(), q.double().requires_grad_()
    ref = R.iwelbo(p64, q64, dim)
    ref.backward(g.double())
    close(out, ref.detach(), dtype)
    close(out, c_out, dtype)
    close(stats, c_stats, dtype)
    close(gp, p64.grad, dtype)
    close(gq, q64.grad, dtype)
    return launches


# K per row: whole double steps only, double steps then single ones, a lane
# tail (K not a multiple of the vector), and split K with every piece
# taking the double steps.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K,device", [
    (1024, {}), (1000, {}), (1001, {}), (40000, dict(sm_count=2)),
], ids=["double-steps", "double-then-single", "lane-tail", "split-pieces"])
def test_rows_two_steps_in_flight(K, device, dtype):
    launches = check((5, K), 1, dtype, **device)
    (args, rec), = kernels(launches, "reduce_rows_kernel")
    if K != 1001:
        assert args[1] == str(vec_width(dtype)), "the vector path, which takes two steps at a time"
    if "sm_count" in device:
        assert rec["grid"][1] > 1, "split K: every piece takes the double steps"


# Columns: whole steps of kRowsPerStep rows, a last partial step (K % 4), a
# last partial vector of columns (inner % VEC), and split K.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(68, 24), (67, 24), (66, 44), (4003, 40)],
                         ids=["whole-steps", "partial-step", "inner-44", "split"])
def test_cols_whole_steps_in_flight(shape, dtype):
    launches = check(shape, 0, dtype)
    (args, rec), = kernels(launches, "reduce_cols_kernel")
    aligned = shape[1] % vec_width(dtype) == 0
    assert args[1] == (str(vec_width(dtype)) if aligned else "1")
    assert (rec["grid"][1] > 1) == (shape[0] == 4003)


@pytest.mark.parametrize("resident,pieces", [(1, 4), (2, 8), (None, 32)])
def test_split_k_fills_one_wave_of_resident_blocks(resident, pieces):
    """One output of 2^17 column rows on a 4-SM device: as many pieces as
    4 SMs hold blocks of the column kernel at once (the occupancy the
    device reports; by default 2048 threads / 256), never more."""
    p = torch.randn(1 << 17, 4)
    name = "reduce_cols_kernel<float, 4, false>"
    blocks = None if resident is None else {name: resident}
    _, launches = run_emulated(lambda: OPS.iwelbo(p, None, 0, False, 0.0), sm_count=4,
                               resident_blocks=blocks)
    (_, rec), = kernels(launches, "reduce_cols_kernel")
    assert rec["kernel"] == name
    assert rec["grid"][0] * rec["grid"][1] * rec["grid"][2] == pieces


def test_split_k_never_adds_a_partial_wave():
    # 3 row blocks on 4 SMs x 2 resident blocks: 2 pieces (6 blocks, one
    # wave), not 3 (9 blocks, a second wave of one).
    p = torch.randn(3, 1 << 16)
    name = "reduce_rows_kernel<float, 4, 256, false>"
    _, launches = run_emulated(lambda: OPS.iwelbo(p, None, 1, False, 0.0), sm_count=4,
                               resident_blocks={name: 2})
    (_, rec), = kernels(launches, "reduce_rows_kernel")
    assert rec["grid"][0] == 3 and rec["grid"][1] == 2


# Long rows (a block each) filling between one and kTailWaves (4) waves of 4
# SMs x 1 resident block: split K only where the last wave would hold fewer
# than half the slots, into the fewest pieces that leave a last wave at least
# half full or make 4 waves; never when no piece count allows it.
@pytest.mark.parametrize("rows,K,pieces", [
    (5, 16384, 2),   # 1.25 waves -> 2.5 (last wave half full)
    (13, 16384, 2),  # 3.25 waves -> 6.5 (4 waves reached first)
    (6, 16384, 1),   # last wave already half full
    (8, 16384, 1),   # whole waves
    (5, 12000, 1),   # one chunk of 8192 elements at most: nothing to split
    (17, 16384, 1),  # 4.25 waves: the tail is a small share
], ids=["half-full", "four-waves", "already-half", "whole", "too-short", "many-waves"])
def test_split_k_shortens_the_tail_wave_of_long_rows(rows, K, pieces):
    p = torch.randn(rows, K, generator=torch.Generator().manual_seed(1))
    name = "reduce_rows_kernel<float, 4, 256, false>"
    out, launches = run_emulated(lambda: OPS.iwelbo(p, None, 1, False, 0.0), sm_count=4,
                                 resident_blocks={name: 1})
    (_, rec), = kernels(launches, "reduce_rows_kernel")
    assert rec["kernel"] == name
    assert rec["grid"][0] == rows and rec["grid"][1] == pieces
    assert len(kernels(launches, "merge_kernel")) == (pieces > 1)
    close(out, R.iwelbo(p.double(), None, 1), torch.float32)
