"""sbdiff: Schrödinger-bridge type diffusion models as variational autoencoders over paths.

The public API::

    from sbdiff import Config, fit, load_run, evaluate
    cfg = Config(); cfg.data.data = "moons"; cfg.train.steps = 2000
    result = fit(cfg, "runs/moons")          # -> TrainResult with .model (a PathVAE)
    x = result.model.sample(1000)            # (1000, 2)
    nll = -result.model.log_prob(x).mean()   # PF-ODE likelihood, nats

Building blocks (reference SDEs, encoders, decoders, objectives, solvers) live in their modules.
"""

from ._utils import SbdiffError
from .config import Config, load_config
from .data import load_data
from .evaluation import evaluate
from .model import PathVAE
from .references import make_reference
from .train import TrainResult, TrainingInterrupted, fit, load_run, resume_run

__version__ = "0.1.0"

__all__ = [
    "Config",
    "PathVAE",
    "SbdiffError",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "load_config",
    "load_data",
    "load_run",
    "make_reference",
    "resume_run",
]
