"""The emulator's checks catch what a GPU (under compute-sanitizer) would:
each deliberately broken kernel fails with its check's message, and its
correct twin runs clean. Also the defects found by reading the CUDA code,
each with the test that failed before its fix."""

import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import iwae_fused
from iwae_fused import cuda_emulator

from conftest import close
from emulated import OPS, kernels, launch_census, never_launched, pytestmark, run_emulated  # noqa: F401

EMU = torch.ops.iwae_fused_emu

CHECKS = {
    "divergent_shuffle": r"divergent __shfl_xor_sync: lane 16 exits, but lanes 0-15 wait for it",
    "divergent_barrier": r"barrier not reached by every thread",
    "shared_race": r"shared-memory race on buf\[0\]: read here while thread \(0,0,0\) wrote it",
    "tail_read": r"out-of-bounds global load of 4 bytes, 0 bytes past the end of in",
    "misaligned_vector_load": r"misaligned 16-byte global load",
    "uninitialised_shared": r"read of uninitialised shared memory buf\[0\]",
    "unwritten_output": r"left out byte 252 of 256 unwritten",
    "shared_over_limit": r"static shared memory \(65536 bytes with buf\) exceeds the device's limit of 49152",
    "grid_y_over_limit": r"invalid configuration argument .*grid.y = 70000 exceeds the device's 65535",
    "block_over_limit": r"invalid configuration argument .*block.x = 1025 exceeds",
    "zero_grid": r"invalid configuration argument .*zero-sized grid",
    "global_write_race": r"global-memory race on out\[0\] \(address 0x[0-9a-f]+\): written here and by "
                         r"thread \(0,0,0\) of block \(0,0,0\), another block of the same launch",
    "global_read_race": r"global-memory race on out\[0\] \(address 0x[0-9a-f]+\): read here, written by "
                        r"thread \(0,0,0\) of block \(0,0,0\), another block of the same launch",
    "global_race_in_block": r"global-memory race on out\[1\] \(address 0x[0-9a-f]+\): written here and by "
                            r"thread \(0,0,0\) of block \(0,0,0\), with no __syncthreads between",
    "storage_bounds": r"out-of-bounds global load of 4 bytes, outside the storage of in \(272 bytes\): "
                      r"0 bytes past its end, though within the extent its kernel arguments describe",
}


# Broken configurations are refused before any block runs.
REFUSED = {"grid_y_over_limit", "block_over_limit", "zero_grid"}
NO_LAUNCH = pytest.mark.no_launch("the op's own checks fail before any kernel")


@NO_LAUNCH
def test_every_selftest_case_has_a_test():
    assert set(cuda_emulator._cuda_emu.selftest_cases()) == set(CHECKS)


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.no_launch("the device refuses the configuration"))
    if c in REFUSED else c for c in CHECKS])
def test_broken_kernel_is_caught(case):
    with pytest.raises(RuntimeError, match=CHECKS[case]) as err:
        cuda_emulator._cuda_emu.selftest(case, True)
    if "configuration" not in CHECKS[case] and case != "unwritten_output":
        # the message names the kernel, the block and the thread
        assert re.search(r"\[kernel selftest::\w+<true>, block \(\d,0,0\), thread \(\d+,0,0\)\]$",
                         str(err.value).splitlines()[0])


@pytest.mark.parametrize("case", list(CHECKS))
def test_correct_twin_runs_clean(case):
    cuda_emulator._cuda_emu.selftest(case, False)


def test_shuffles_and_barriers_give_the_right_values():
    """The correct twins compute what CUDA would: xor-1 partners' sums, the
    next thread's value through shared memory after a barrier."""
    out = cuda_emulator._cuda_emu.selftest("divergent_shuffle", False)
    x = torch.arange(64.0)
    torch.testing.assert_close(out, x + x.view(-1, 2).flip(1).reshape(-1))
    out = cuda_emulator._cuda_emu.selftest("shared_race", False)
    torch.testing.assert_close(out, torch.cat([x[:1], x[:-1]]))


@NO_LAUNCH
def test_device_limits_are_restored_after_the_block():
    before = cuda_emulator.device()
    with cuda_emulator.emulated(sm_count=2, max_grid_x=5, max_grid_z=3, block_order="shuffled", seed=4):
        assert cuda_emulator.device()["sm_count"] == 2
        assert cuda_emulator.device()["max_grid_x"] == 5
        assert "toy" in cuda_emulator.device()["name"]
        assert cuda_emulator._cuda_emu.block_order() == ("shuffled", 4)
    assert cuda_emulator.device() == before
    assert cuda_emulator._cuda_emu.block_order() == ("xyz", 0)
    assert before["sm_count"] == 132 and before["max_grid_z"] == 65535
    assert before["max_grid_x"] == 2**31 - 1


def test_launch_logic_sizes_grids_by_the_device():
    """The host code's grid decisions come from the emulated device's
    properties: [64, 2048] rows make 8 blocks; an H100 (one wave of 132 x 8
    resident blocks wanted) splits K into pieces, a 1-SM toy (8 wanted) does
    not."""
    p = torch.randn(64, 2048)
    _, launches = run_emulated(lambda: OPS.iwelbo(p, None, 1))
    assert launches[0]["grid"][:2] == (8, 2) and launches[-1]["kernel"].startswith("merge_kernel")
    _, launches = run_emulated(lambda: OPS.iwelbo(p, None, 1), sm_count=1)
    assert launches[0]["grid"][:2] == (8, 1) and len(launches) == 1


# ---- the launch census ---------------------------------------------------------


@NO_LAUNCH
def test_census_names_what_no_explicit_test_launched():
    """The check behind test_every_kernel_instantiation_is_launched: an
    instantiation launched by no test, or only by a random-case test, is
    reported."""
    every = ["k<float, 4>", "k<float, 1>", "k<Half, 8>"]
    census = {"m::test_a[x]": {"k<float, 4>"}, "m::test_random[3]": {"k<float, 1>"},
              "m::test_b": {"k<Half, 8>"}}
    assert never_launched(census, census, every) == []
    assert never_launched(census, census, every, {"test_random"}) == ["k<float, 1>"]
    assert never_launched(census, ["m::test_a[x]"], every) == ["k<Half, 8>", "k<float, 1>"]


def test_instantiations_come_from_the_dispatch_code():
    """The registry holds every kernel the launch code instantiates (124
    when written: 4 dtypes x the vector widths, thread layouts and log_q of
    each kernel), not the selftest's, and names them as the launch log does."""
    every = cuda_emulator.instantiations()
    assert len(every) == len(set(every)) >= 124
    assert "reduce_rows_kernel<float, 4, 256, true>" in every
    assert "weights_kernel<BFloat16, 1, false, true>" in every
    assert not [k for k in every if "selftest" in k]
    _, launches = run_emulated(lambda: OPS.iwelbo(torch.randn(3, 100), None, 1))
    assert all(r["kernel"] in every for r in launches)


# ---- block order -------------------------------------------------------------


def test_block_order_is_chosen_per_launch():
    """Reversed runs the last block first; shuffled draws a fresh order for
    each launch from (seed, launch number), the same again for the same seed."""
    p = torch.randn(100, 104)  # 13 blocks of warp rows, 41 of weights

    def step():
        out, stats = OPS._iwelbo_forward(p, None, 1, False, 0.0)
        OPS.iwelbo_backward(torch.ones(100), stats, p, None, 1, False, 0.0, [True, False])

    _, xyz = run_emulated(step)
    _, rev = run_emulated(step, block_order="reversed")
    _, sh1 = run_emulated(step, block_order="shuffled", seed=1)
    _, sh1b = run_emulated(step, block_order="shuffled", seed=1)
    _, sh2 = run_emulated(step, block_order="shuffled", seed=2)
    assert [r["block_order"] for r in xyz] == ["xyz", "xyz"]
    assert xyz[0]["first_blocks"] == list(range(8))
    n = xyz[0]["grid"][0]
    assert rev[0]["block_order"] == "reversed" and rev[0]["first_blocks"] == list(range(n - 1, n - 9, -1))
    assert [r["first_blocks"] for r in sh1] == [r["first_blocks"] for r in sh1b]  # reproducible
    assert sh1[0]["first_blocks"] != sh2[0]["first_blocks"]  # from the seed
    assert sh1[0]["first_blocks"] not in (xyz[0]["first_blocks"], rev[0]["first_blocks"])
    assert sh1[1]["first_blocks"][:8] != list(range(8))


def test_kernel_that_depends_on_block_order_is_caught_in_every_order():
    """A block reading what another block of the same launch wrote: a race
    in x, y, z order (the writer ran first); in reverse the read comes
    first and reads memory nothing wrote."""
    for order, message in [("xyz", CHECKS["global_read_race"]),
                           ("reversed", r"read of uninitialised global memory: out byte 0")]:
        cuda_emulator._cuda_emu.set_block_order(order, 0)
        try:
            with pytest.raises(RuntimeError, match=message):
                cuda_emulator._cuda_emu.selftest("global_read_race", True)
            cuda_emulator._cuda_emu.selftest("global_read_race", False)
        finally:
            cuda_emulator._cuda_emu.set_block_order("xyz", 0)


# ---- the storage a tensor owns bounds its accesses ---------------------------


@pytest.mark.parametrize("fault,run,storage", [
    ("log_p_outer_stride", lambda p, q: OPS.iwelbo(p, q, 1), "log_p"),
    ("log_p_outer_stride", lambda p, q: OPS._vimco_forward(p, q, 1, False), "log_p"),
    ("grad_out_outer_stride", lambda p, q: OPS.iwelbo_backward(
        torch.ones(8), OPS._iwelbo_forward(p, q, 1, False, 0.0)[1], p, q, 1, False, 0.0,
        [True, True]), "grad_log_p"),
    ("grad_out_outer_stride", lambda p, q: OPS.vimco_backward(
        torch.ones(8), OPS._vimco_forward(p, q, 1, False)[1], p, q, 1, False, [True, True]),
     "grad_log_p"),
    ("grad_in_outer_stride", lambda p, q: OPS.iwelbo_backward(
        torch.ones(8), OPS._iwelbo_forward(p, q, 1, False, 0.0)[1], p, q, 1, False, 0.0,
        [True, True]), "grad"),
    # rows that fit a vector, stats not saved: weights_rows_kernel reads g
    ("grad_in_outer_stride", lambda p, q: OPS.iwelbo_backward(
        torch.ones(8), torch.empty(0), p[:, :4].contiguous(), q[:, :4].contiguous(), 1, False,
        0.0, [True, True]), "grad"),
], ids=["iwelbo-log_p", "vimco-log_p", "iwelbo_backward-grad", "vimco_backward-grad",
        "iwelbo_backward-g", "iwelbo_backward-recomputed-g"])
def test_planted_planner_stride_bug_is_caught(fault, run, storage):
    """A stride bug in the planner doubles an outer stride: the extent the
    kernel arguments describe grows with it, so only the storage the tensor
    owns shows the accesses past its end."""
    p, q = torch.randn(8, 40), torch.randn(8, 40)
    run_emulated(lambda: run(p, q))  # clean without the fault
    with cuda_emulator.planted_fault(fault):
        with pytest.raises(RuntimeError, match=rf"outside the storage of {storage} \(\d+ bytes\).*"
                                               r"within the extent its kernel arguments describe"):
            run_emulated(lambda: run(p, q))
    run_emulated(lambda: run(p, q))  # and clean again


@NO_LAUNCH
def test_unknown_fault_is_an_error():
    with pytest.raises(RuntimeError, match="no planted fault named 'typo'"):
        with cuda_emulator.planted_fault("typo"):
            pass


# ---- shared memory only through the checked accessors ------------------------

SHARED_USE = {
    "accessor": "st_shared(sm + threadIdx.x, 1.0f); float v = ld_shared(sm + 2 + 1u); (void)v;",
    "index": "sm[threadIdx.x] = 1.0f;",
    "dereference": "*(sm + 1) = 1.0f;",
    "decay": "float* raw = sm; (void)raw;",
}


@NO_LAUNCH
@pytest.mark.parametrize("use", list(SHARED_USE))
def test_shared_memory_compiles_only_through_the_accessors(use, tmp_path):
    """Under the emulator an IWAE_SHARED array cannot be indexed, dereferenced
    or decayed to a raw pointer (which would bypass every shared-memory
    check); `name + i` through ld_shared / st_shared compiles."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "kernel.cpp"
    src.write_text('#include "cuda/emu/simt.h"\nvoid kernel() {\n  IWAE_SHARED(float, sm, 64);\n  '
                   + SHARED_USE[use] + "\n}\n")
    csrc = os.path.join(os.path.dirname(__file__), os.pardir, "csrc")
    r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-DIWAE_CUDA_EMU", "-I", csrc, str(src)],
                       capture_output=True, text=True)
    if use == "accessor":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0
        assert "kernel.cpp:4" in r.stderr, r.stderr


# ---- defects found by reading, each with its test ---------------------------


@NO_LAUNCH
@pytest.mark.parametrize("arg", ["grad", "stats"])
@pytest.mark.parametrize("op", ["dreg_backward", "vimco_backward", "iwelbo_backward"])
def test_backward_ops_check_every_device(op, arg):
    """Defect 1: dreg_backward and vimco_backward never checked the devices
    of grad and stats/state (the kernel then read host pointers)."""
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    if op == "vimco_backward":
        _, stats = OPS._vimco_forward(p, q, 0, False)
        call = lambda g, s: EMU.vimco_backward(g, s, p, q, 0, False, [True, True])  # noqa: E731
        name = "state" if arg == "stats" else arg
    else:
        _, stats = OPS._iwelbo_forward(p, q, 0, False)
        if op == "dreg_backward":
            call = lambda g, s: EMU.dreg_backward(g, s, p, q, 0, "dreg")  # noqa: E731
        else:
            call = lambda g, s: EMU.iwelbo_backward(g, s, p, q, 0, False, 0.0, [True, True])  # noqa: E731
        name = arg
    g = torch.ones(4)
    if arg == "grad":
        g = g.to("meta")
    else:
        stats = stats.to("meta")
    with pytest.raises(RuntimeError, match=rf"{op}\(\): expected all tensors on the same device, "
                                           rf"but log_p is on cpu and {name} is on meta"):
        call(g, stats)


@NO_LAUNCH
@pytest.mark.parametrize("order", ["log_p-elsewhere", "log_q-elsewhere"])
@pytest.mark.parametrize("op", ["iwelbo", "normalized_weights", "logsumexp_stats", "weight_diagnostics"])
def test_mixed_devices_name_the_arguments_before_the_guard(op, order):
    """Defect 3: the device guard was made from log_p's device before any
    check, so log_p on another device gave the guard's own error
    ("...Guard initialized with non-... DeviceType") instead of the op's."""
    a, b = torch.randn(5, 4), torch.randn(5, 4, device="meta")
    p, q = (b, a) if order == "log_p-elsewhere" else (a, b)
    with pytest.raises(RuntimeError, match=r"expected all tensors on the same device, but log_p is on "
                                           r"(cpu|meta) and log_q is on (meta|cpu)"):
        getattr(EMU, op)(p, q, 0)


CPU = pytest.mark.no_launch("the CPU kernels")
# Below |beta| = 0.25 every backend's op glue takes the composite ATen path
# (ops_glue.h, renyi_near_elbo), which runs no CUDA kernel: the same code on
# the CPU. The emulated GPU is tested where its kernels compute the bound.
RENYI_NEAR_ONE = [pytest.param("cpu", b, marks=CPU) for b in
                  [0.5, 0.25, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]] + [
    pytest.param("cuda-emulated", b) for b in [0.5, 0.25]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("device,beta", RENYI_NEAR_ONE)
def test_renyi_near_one_keeps_relative_accuracy(device, dtype, beta):
    """Defect 5: (log-sum - log K) / beta cancelled (1e-2 relative at
    beta = 1e-5 in float32). Against 50-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    gen = torch.Generator().manual_seed(11)
    lw = (torch.randn(3, 40, generator=gen, dtype=torch.float64) * 2 - 5).to(dtype)
    lw[2] += 30.0  # a mean far from zero
    alpha = 1.0 - beta

    def run():
        return iwae_fused.iwelbo(lw, dim=1, alpha=alpha)

    if device == "cuda-emulated":
        got, launches = run_emulated(run)
        assert launches and all(r["kernel"].startswith("reduce_") for r in launches), \
            "the bound came from the CUDA kernel"
    else:
        got = run()
    b = mpmath.mpf(beta)
    for r in range(3):
        xs = [mpmath.mpf(float(v)) for v in lw[r].double()]
        exact = mpmath.log(sum(mpmath.exp(b * x) for x in xs) / len(xs)) / b
        rel = abs((mpmath.mpf(float(got[r])) - exact) / exact)
        assert rel < (4e-7 if dtype == torch.float32 else 1e-14), (r, float(rel))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=CPU),
    pytest.param("cuda-glue", marks=pytest.mark.no_launch(
        "alpha = 1 is the exact ELBO: composite ATen ops on every backend, no CUDA kernel"))])
def test_elbo_of_half_inputs_is_rounded_once(device, dtype):
    """Defect 6: alpha = 1 took mean(log_p - log_q) in the input dtype, so the
    difference was rounded before the mean: -75.0 for bfloat16 where the
    exact mean, -74.5, is a bfloat16 value. On the CUDA backend (its op
    glue, run emulated) as on the CPU."""
    log_p = torch.tensor([-55.5, -0.5], dtype=dtype)
    log_q = torch.tensor([76.0, 17.0], dtype=dtype)

    def run():
        return iwae_fused.iwelbo(log_p, log_q, dim=0, alpha=1.0)

    if device == "cuda-glue":
        got, launches = run_emulated(run)
        assert launches == []
    else:
        got = run()
    exact = (log_p.double() - log_q.double()).mean()
    assert got.dtype == dtype and got.item() == exact.to(dtype).item() == -74.5
    near = iwae_fused.iwelbo(log_p, log_q, dim=0, alpha=1.0 - 1e-6)
    close(got, near, dtype)
