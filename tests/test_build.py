"""setup.py's CUDA decision: FORCE_CUDA without a toolkit fails clearly,
FORCE_CPU wins, and nothing is decided from torch.cuda.is_available()."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_setup(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "FORCE_CPU", "CUDA_HOME")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )


def test_force_cuda_without_toolkit_fails_with_a_clear_message():
    res = run_setup({"FORCE_CUDA": "1", "CUDA_HOME": "/nonexistent/cuda"})
    assert res.returncode != 0
    assert "FORCE_CUDA=1 but no CUDA toolkit was found at CUDA_HOME=/nonexistent/cuda" in res.stderr
    assert "set CUDA_HOME" in res.stderr


def test_force_cpu_builds_cpu_only_and_tags_the_version():
    import torch

    res = run_setup({"FORCE_CPU": "1", "FORCE_CUDA": "1"})
    assert res.returncode == 0, res.stderr
    major, minor = torch.__version__.split(".")[:2]
    assert res.stdout.strip().splitlines()[-1].endswith(f"+pt{major}{minor}cpu")
