"""The emulator's plan-only mode (the full-size launch plans of
benchmarks/gpu_model.py) and its counters (benchmarks/GPU-COUNTS.md):
each counter against a kernel whose count is known from its source, and
each shown to tell a worse kernel or configuration from a better one."""

import pytest
import torch

from iwae_fused import cuda_emulator

from emulated import OPS, kernels, pytestmark, run_emulated  # noqa: F401


def fwd_bwd(p, q, dim):
    out_shape = [s for i, s in enumerate(p.shape) if i != dim]
    g = torch.ones(out_shape, dtype=p.dtype)
    _, stats = OPS._iwelbo_forward(p, q, dim, False, 0.0)
    return OPS.iwelbo_backward(g, stats, p, q, dim, False, 0.0, [True, True])


def plan_of(fn, **device):
    cuda_emulator.clear_launches()
    with cuda_emulator.emulated(plan_only=True, **device):
        fn()
    return cuda_emulator.launches(clear=True)


CONFIG = ("kernel", "grid", "block", "int_args")


@pytest.mark.parametrize("shape,dim,device", [
    ((50, 128), 0, {}),
    ((3000, 7), 0, {}),  # columns, split K and merged
    ((9, 5000), 1, dict(sm_count=4)),  # long rows, split K on a toy device
    ((300, 16), 1, {}),  # short rows through the shared-memory tiles
    ((600, 5, 3), 1, {}),  # small inner size, tiles
])
def test_plan_only_matches_the_executed_launches(shape, dim, device):
    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    _, ran = run_emulated(lambda: fwd_bwd(p, q, dim), **device)
    planned = plan_of(lambda: fwd_bwd(p, q, dim), **device)
    assert [{k: r[k] for k in CONFIG} for r in planned] == [{k: r[k] for k in CONFIG} for r in ran]
    assert all(r["load_bytes"] == 0 and r["store_bytes"] == 0 for r in planned), "nothing executed"
    assert all(r["load_bytes"] > 0 for r in ran)


def test_plan_only_plans_full_size_shapes_without_executing():
    # 2^28 elements of each input: planned in a blink, no page of them read.
    shape = (16384, 16384)
    p, q = torch.empty(shape), torch.empty(shape)
    launches = plan_of(lambda: fwd_bwd(p, q, 0))
    (_, rec), = kernels(launches, "reduce_cols_kernel")
    assert rec["grid"][0] * rec["block"][0] * 4 >= 16384  # every column has a thread
    (_, w), = kernels(launches, "weights_kernel")
    assert all(r["load_bytes"] == 0 for r in launches)


def test_integer_arguments_are_recorded():
    p = torch.randn(4, 20000)
    launches = plan_of(lambda: OPS.iwelbo(p, None, 1, False, 0.0), sm_count=4)
    (_, red), = kernels(launches, "reduce_rows_kernel")
    (_, merge), = kernels(launches, "merge_kernel")
    kchunk, = red["int_args"]
    pieces = red["grid"][1]
    assert pieces > 1 and kchunk * pieces >= 20000 > kchunk * (pieces - 1)
    assert merge["int_args"] == [pieces]


def counts(fn, **device):
    _, launches = run_emulated(fn, count_requests=True, **device)
    return launches


def test_64_bit_shuffles_count_two_shfl_instructions():
    # A warp per row: 5 butterfly rounds of 3 values (m, s, t) per lane.
    for dtype, per_value in ((torch.float32, 1), (torch.float64, 2)):
        p = torch.randn(8, 96, dtype=dtype)
        launches = counts(lambda: OPS.iwelbo(p, None, 1, False, 0.0))
        (_, rec), = kernels(launches, "reduce_rows_kernel")
        threads = rec["grid"][0] * rec["block"][0]
        assert rec["shuffles"] == threads * 5 * 3 * per_value


def test_every_exponential_and_logarithm_is_counted_vimco_included():
    gen = torch.Generator().manual_seed(1)
    p, q = torch.randn(64, 10, generator=gen), torch.randn(64, 10, generator=gen)
    launches = counts(lambda: OPS._vimco_forward(p, q, 1, False))
    fwd = sum(r["exps"] for r in launches), sum(r["logs"] for r in launches)
    # absorb: one exp per sample but the first of a row (it starts the max,
    # the others' pair is empty); per example, the bound's exp(lo), log1p and
    # log K, and log(others' sum) for lo, taken twice (the saved word and the
    # bound's argument: a log per example, not per sample).
    assert fwd[0] == 64 * 9 + 64 and fwd[1] == 64 * 4
    _, state = OPS._vimco_forward(p, q, 1, False)
    g = torch.ones(64)
    launches = counts(lambda: OPS.vimco_backward(g, state, p, q, 1, False, [True, True]))
    (_, rec), = kernels(launches, "vimco_backward_kernel")
    assert rec["exps"] >= 2 * 640 and rec["logs"] >= 640  # w, f; a log per signal
    # The IWAE backward's weight is an exponential per element; the forward's
    # finalisation a logarithm per output (log s, log K, and log_norm).
    launches = counts(lambda: fwd_bwd(p, q, 1))
    (_, w), = kernels(launches, "weights_kernel") or kernels(launches, "weights_flat_kernel")
    assert w["exps"] == 640


def test_shared_memory_bank_conflicts_of_the_tile_padding():
    # tiles.h pads a word per 32: thread j reading e = j K + k hits distinct
    # banks for K <= 32, two-way at K = 64; the coalesced loads are
    # conflict-free. The counter must see exactly that.
    per_req = {}
    for K in (16, 32, 64):
        p = torch.randn(4096 // K * 4, K)
        launches = counts(lambda: OPS.iwelbo(p, None, 1, False, 0.0))
        (_, rec), = kernels(launches, "reduce_tiles_kernel")
        reqs = rec["shared_load_requests"] + rec["shared_store_requests"]
        assert reqs > 0
        per_req[K] = rec["shared_wavefronts"] / reqs, rec["shared_ideal_wavefronts"] / reqs
    assert per_req[16][0] == pytest.approx(per_req[16][1])
    assert per_req[32][0] == pytest.approx(per_req[32][1])
    assert per_req[64][0] > 1.25 * per_req[64][1]  # the reads are two-way


def test_simt_efficiency_sees_idle_threads_of_a_serial_phase():
    # The tile kernel at K = 64: 64 outputs per 4096-value tile, so 64 of the
    # 256 threads do the serial reductions (block balance far below 1), while
    # a warp-per-row reduction keeps its lanes equally busy.
    p = torch.randn(256, 64)
    (_, tiles), = kernels(counts(lambda: OPS.iwelbo(p, None, 1, False, 0.0)), "reduce_tiles_kernel")
    assert tiles["block_ops"] / tiles["block_op_slots"] < 0.6
    rows = torch.randn(64, 2048)
    (_, warp), = kernels(counts(lambda: OPS.iwelbo(rows, None, 1, False, 0.0)), "reduce_rows_kernel")
    assert warp["warp_ops"] / warp["warp_op_slots"] > 0.9
