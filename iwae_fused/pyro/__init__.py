"""iwae_fused.pyro: importance-weighted objectives for Pyro (optional extra).

    from iwae_fused.pyro import IWAE_ELBO
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                         loss=IWAE_ELBO(num_particles=50, estimator="dreg"))

Needs pyro-ppl (``pip install iwae_fused[pyro]``); ``import iwae_fused`` alone
never imports it.
"""

try:
    import pyro  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without pyro
    raise ImportError(
        "iwae_fused.pyro needs pyro-ppl: pip install 'iwae_fused[pyro]' (or pyro-ppl>=1.9)"
    ) from e

from iwae_fused.pyro.elbo import IWAE_ELBO

__all__ = ["IWAE_ELBO"]
