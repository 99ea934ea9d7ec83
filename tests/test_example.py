"""A few steps of the training example, end to end (data, models, the
K-sample evaluation, the table), so the example keeps running."""

import importlib.util
import os

import pytest

pytest.importorskip("sklearn")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example():
    path = os.path.join(ROOT, "examples", "train_iwae.py")
    spec = importlib.util.spec_from_file_location("train_iwae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_example_smoke(tmp_path, capsys):
    example = load_example()
    results = example.main([
        "--epochs", "1", "--max-steps", "3", "--eval-samples", "64", "--curve-samples", "8",
        "--chunk-size", "32", "--timing-k", "--out", str(tmp_path),
        "--models", "vae:1", "iwae:5",
    ])
    out = capsys.readouterr().out
    assert "| VAE |" in out and "| IWAE |" in out
    assert [r["kind"] for r in results] == ["vae", "iwae"]
    for r in results:
        assert -100 < r["test_ll"] < 0  # nats per 64 binary pixels
        assert 0 <= r["active"] <= 20
    assert (tmp_path / "results.md").exists()


def test_objectives_agree_at_one_sample():
    # With k = 1 the IWAE bound is the ELBO: the VAE is IWAE's k = 1 column.
    import torch

    example = load_example()
    log_p, log_q = torch.randn(1, 7, dtype=torch.float64), torch.randn(1, 7, dtype=torch.float64)
    torch.testing.assert_close(
        example.objective("iwae", log_p, log_q), example.objective("vae", log_p, log_q)
    )


def test_snr_example_smoke(tmp_path):
    # The Rainforth et al. SNR experiment at two small K: the table and the
    # direction of the generative SNR (it rises with K under both estimators).
    path = os.path.join(ROOT, "examples", "snr_rainforth.py")
    spec = importlib.util.spec_from_file_location("snr_rainforth", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--ks", "1", "30", "--repeats", "200", "--points", "2", "--out", str(tmp_path)])
    assert [r["K"] for r in rows] == [1, 30]
    assert rows[1]["iwae_generative"] > rows[0]["iwae_generative"]
    assert rows[1]["dreg_inference"] > rows[1]["iwae_inference"]
    assert (tmp_path / "snr.md").exists()


def test_progress_talks_without_a_terminal(capsys):
    # Under pytest stderr is not a terminal: the examples print a line at every
    # tenth of a long run, with the time spent and left, instead of a bar.
    example = load_example()
    assert list(example.progress(range(20), 20, "epochs")) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].strip().startswith("epochs: 2/20 (") and "s left)" in lines[0]
    assert lines[-1].strip().startswith("epochs: 20/20 (")
