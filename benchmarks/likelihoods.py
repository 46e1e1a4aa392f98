"""How good are each preset's samples and likelihoods? The generative checkerboard (share of samples on
the dark squares, PF-ODE nll and path-ELBO nelbo on held-out points), the 2-D bridge 8 gaussians -> moons
and 2-D generation (exact W2 against a floor), VSDM against SGM on anisotropic data, and the Gaussian NLL
against its exact value (docs/results.md, "likelihoods"; digits: the `sbdiff train --data digits`
commands there). Run alone: the budgets are wall-clock.

    python benchmarks/likelihoods.py sgm                      # Gaussian NLL and checkerboard, SGM (make acceptance)
    python benchmarks/likelihoods.py checkerboard --methods dsbm,sgm --minutes 6
    python benchmarks/likelihoods.py checkerboard-cli --seeds 0 1 2 --methods sbfbsde sgm --minutes 6
    python benchmarks/likelihoods.py lightsb --ks 10 50 200   # lightsb on the bridge and the checkerboard
    python benchmarks/likelihoods.py bridge2d --minutes 3     # dsbm, 8 gaussians -> moons
    python benchmarks/likelihoods.py generate --minutes 5     # dsb, moons / s-curve / 8 gaussians from N(0, I)
    python benchmarks/likelihoods.py vsdm --minutes 5         # VSDM against SGM: straightness and samples
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from _entry import dispatch  # noqa: E402

COMMANDS = {
    "sgm": ("sgm_acceptance.py", [], "sgm: 2-D Gaussian nll vs exact, checkerboard"),
    "checkerboard": ("sbfbsde_checkerboard.py", [], "sbfbsde / sgm / dsbm on the checkerboard, same budget"),
    "checkerboard-cli": ("sbfbsde_trust.py", ["checkerboard"], "the checkerboard through the CLI, one row per --seeds"),
    "lightsb": ("lightsb_mixture2d.py", [], "lightsb for several K: 2-D bridge and checkerboard"),
    "bridge2d": ("dsbm_acceptance.py", ["bridge2d"], "dsbm: 8 gaussians -> moons"),
    "generate": ("dsb_acceptance.py", ["generate"], "dsb: 2-D generation from N(0, I)"),
    "vsdm": ("vsdm_straightness.py", [], "vsdm against sgm on anisotropic data"),
}

if __name__ == "__main__":
    sys.exit(dispatch(__doc__, COMMANDS))
