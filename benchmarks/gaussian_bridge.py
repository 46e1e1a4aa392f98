"""Does each preset recover the closed-form Gaussian bridge? Two random Gaussians joined by a Brownian
bridge (eps = 1) have an exact Schrödinger bridge (DESIGN §6.1); every preset is trained on unpaired
samples of the two sides and scored by the decoded plan's cross-covariance error (C_σ err), cBW2-UVP and
BW2-UVP (docs/results.md, "gaussian"). Run alone: the budgets are wall-clock.

    python benchmarks/gaussian_bridge.py dsb --minutes 8 --dim 5
    python benchmarks/gaussian_bridge.py dsbm --minutes 8 --dim 5 --seeds 0 1 2
    python benchmarks/gaussian_bridge.py sbfbsde --dim 5 --seeds 11 12 13 14 15 --minutes 8
    python benchmarks/gaussian_bridge.py peer --minutes 5    # torchcfm's SF²M against the closed form
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from _entry import dispatch  # noqa: E402

COMMANDS = {
    "dsb": ("dsb_acceptance.py", ["gaussian"], "dsb, pair seed 0"),
    "dsbm": ("dsbm_acceptance.py", ["gaussian"], "dsbm, one row per --seeds"),
    "sbfbsde": ("sbfbsde_trust.py", ["bridge", "--problem", "gaussian", "--methods", "sbfbsde"],
                "sbfbsde through the CLI, one row per --seeds"),
    "peer": ("peer_gaussian_check.py", [], "torchcfm's SF²M (the bench extra) against the exact plan"),
}

if __name__ == "__main__":
    sys.exit(dispatch(__doc__, COMMANDS))
