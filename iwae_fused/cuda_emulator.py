"""Run iwae_fused's CUDA kernels on the CPU, from their CUDA source.

The extension ``iwae_fused._cuda_emu`` (built when ``IWAE_FUSED_CUDA_EMU=1``;
``scripts/run.sh test`` does) holds the CUDA kernels and their host launch
logic compiled by the host compiler against an emulator of CUDA's execution
model (``csrc/cuda/emu/``): blocks, warps of 32 lanes, shared memory,
barriers and shuffles, with the checks a GPU run under compute-sanitizer would
make (out-of-bounds and misaligned accesses, divergent shuffles and barriers,
shared-memory races, reads of memory nothing wrote) and some it would not:
races through global memory within a launch (an element written by one
thread and read or written by another of a different block, or of the same
block with no ``__syncthreads`` between), accesses outside the storage a
tensor owns (not only outside the extent its kernel arguments describe),
and blocks run in a reversed or shuffled order on request.

Inside ``emulated()``, every ``torch.ops.iwae_fused`` op that reaches a
backend kernel runs on the emulated device instead of the CPU kernels; CPU
tensors stand for device tensors. Autograd is iwae_fused's own (its C++
backward calls the emulated backward op), so values and gradients are what a
GPU would compute::

    import torch
    import iwae_fused
    from iwae_fused import cuda_emulator

    log_p = torch.randn(4096, 2, requires_grad=True)  # [K, B]: few outputs, long K
    log_q = torch.randn(4096, 2)
    with cuda_emulator.emulated(sm_count=4):        # a 4-SM toy: K split in pieces, then merged
        bound = iwae_fused.iwelbo(log_p, log_q)
        bound.sum().backward()
    print(cuda_emulator.launches())                 # kernels, grids, blocks, counters

Not for training: each emulated thread is a fiber, so a launch costs
microseconds per element.
"""

import contextlib
import importlib.util
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import iwae_fused  # noqa: F401  (registers torch.ops.iwae_fused)
from iwae_fused import _C


def _load():
    # IWAE_FUSED_CUDA_EMU_LIB names another build of the module (the
    # coverage-instrumented one of scripts/emu_coverage.sh) to load instead.
    path = os.environ.get("IWAE_FUSED_CUDA_EMU_LIB")
    if path:
        spec = importlib.util.spec_from_file_location("iwae_fused._cuda_emu", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        from iwae_fused import _cuda_emu
    except ImportError:  # built only with IWAE_FUSED_CUDA_EMU=1
        return None
    return _cuda_emu


_cuda_emu = _load()

H100 = dict(name="emulated NVIDIA H100 (132 SMs)", sm_count=132, max_grid_x=2**31 - 1,
            max_grid_y=65535, max_grid_z=65535, shared_per_block=48 * 1024)


def available():
    return _cuda_emu is not None


def _module():
    if _cuda_emu is None:
        raise RuntimeError(
            "iwae_fused was built without the CUDA emulator: rebuild with "
            "IWAE_FUSED_CUDA_EMU=1 pip install --no-build-isolation -e . "
            "(scripts/run.sh test does this)"
        )
    return _cuda_emu


class _ToEmulated(TorchDispatchMode):
    """Sends iwae_fused ops to the same ops of iwae_fused_emu (below autograd,
    so gradients still come from iwae_fused's C++ autograd)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "iwae_fused":
            name = func._schema.name.split("::", 1)[1]
            func = getattr(getattr(torch.ops.iwae_fused_emu, name), func._overloadname)
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulated(sm_count=None, max_grid_x=None, max_grid_y=None, max_grid_z=None,
             shared_per_block=None, count_requests=False, block_order="xyz", seed=0,
             plan_only=False, resident_blocks=None):
    """Run iwae_fused's kernels on the emulated GPU within the block.

    The device is an H100 unless a limit is given. The launch logic sizes
    every grid by these limits, so a toy device reaches with small shapes
    what an H100 reaches only with large ones: a small ``sm_count`` splits K,
    a small ``max_grid_x`` makes every grid-stride and tile loop take
    several passes, a small ``max_grid_z`` makes the column kernel loop over
    its grid. ``block_order`` runs each launch's blocks in x, y, z order
    (``"xyz"``), in reverse (``"reversed"``), or shuffled afresh per launch
    from ``seed`` (``"shuffled"``): CUDA promises no order, so results must
    not change. ``count_requests`` also groups global accesses into
    warp-level requests (sectors, lane use) in the launch log, at some cost
    in memory and time. ``plan_only`` records each launch (kernel, grid,
    block, integer arguments) as the host code plans it, checked against the
    device's limits, without running a block or touching an output: the
    full-size launch plan of any shape, on ``torch.empty`` inputs (whose
    pages are never touched either). ``resident_blocks`` maps kernel names to
    the blocks one SM holds at once (what
    cudaOccupancyMaxActiveBlocksPerMultiprocessor answers on a GPU; by
    default threads and blocks per SM alone limit it).
    """
    emu = _module()
    before = emu.device()
    before_order = emu.block_order()
    props = dict(H100)
    for key, value in dict(sm_count=sm_count, max_grid_x=max_grid_x, max_grid_y=max_grid_y,
                           max_grid_z=max_grid_z, shared_per_block=shared_per_block).items():
        if value is not None:
            props[key] = value
    if props != H100:
        props["name"] = ("emulated toy GPU ({sm_count} SMs, grid.x <= {max_grid_x}, "
                         "grid.y <= {max_grid_y}, grid.z <= {max_grid_z})").format(**props)
    emu.set_device(**props)
    emu.set_block_order(block_order, seed)
    emu.set_count_requests(bool(count_requests))
    emu.set_plan_only(bool(plan_only))
    resident_before = emu.resident_blocks()
    emu.set_resident_blocks(dict(resident_blocks or {}))
    # The training forward then saves what it saves on a GPU (no stats for
    # rows its backward recomputes them for; csrc/saved_stats.h).
    gpu_before = _C._cpu_stands_for_gpu()
    _C._set_cpu_stands_for_gpu(True)
    try:
        with _ToEmulated():
            yield
    finally:
        _C._set_cpu_stands_for_gpu(gpu_before)
        emu.set_resident_blocks(resident_before)
        emu.set_plan_only(False)
        emu.set_count_requests(False)
        emu.set_block_order(*before_order)
        emu.set_device(**{k: before[k] for k in H100})


def launches(clear=False):
    """The launches made so far: kernel name (with its template arguments),
    grid, block, integer arguments, static shared memory, and counters."""
    emu = _module()
    out = emu.launches()
    if clear:
        emu.clear_launches()
    return out


def clear_launches():
    _module().clear_launches()


def device():
    """The emulated device's properties now."""
    return _module().device()


def instantiations():
    """Every kernel instantiation the CUDA host code can launch (its dispatch
    branches, as compiled), by the names the launch log uses."""
    return [k for k in _module().instantiations() if not k.startswith("selftest::")]


def launch_counts():
    """Launches per kernel instantiation since the module loaded (not reset by
    ``clear_launches``)."""
    return dict(_module().launch_counts())


@contextlib.contextmanager
def planted_fault(name):
    """Break the kernel arguments of every emulated op within the block the
    way a stride bug in the planner would (``"log_p_outer_stride"``,
    ``"grad_out_outer_stride"``, ``"grad_in_outer_stride"``): for tests that
    show the emulator's checks catch such a bug."""
    emu = _module()
    emu.plant_fault(name)
    try:
        yield
    finally:
        emu.plant_fault("none")
