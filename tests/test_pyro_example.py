"""A few steps of examples/pyro_vae.py, end to end (Pyro model and guide, the
four losses, the test log-likelihood from Pyro traces, the table)."""

import importlib.util
import os

import pytest

pytest.importorskip("pyro")
pytest.importorskip("sklearn")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyro_example_smoke(tmp_path, capsys):
    path = os.path.join(ROOT, "examples", "pyro_vae.py")
    spec = importlib.util.spec_from_file_location("pyro_vae", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--max-steps", "2", "--ks", "2", "--eval-samples", "16",
                            "--chunk-size", "8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert [r["kind"] for r in results] == list(example.LOSSES)
    for r in results:
        assert r["steps"] == 2
        assert -100 < r["test_ll"] < 0  # nats per 64 binary pixels
    for label in example.LABELS.values():
        assert f"| {label} |" in out
    assert (tmp_path / "pyro_vae.md").exists()
