"""What does each preset cost? Per training step beside SGM (same network, data and budget), its peak
memory and steps to its own loss plateau; and what crash-safe checkpoints cost (docs/results.md, "cost").
Run alone: the numbers are wall-clock.

    python benchmarks/cost.py presets --seconds 60 --json
    python benchmarks/cost.py checkpoint --steps 400 --rounds 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from _entry import dispatch  # noqa: E402

COMMANDS = {
    "presets": ("preset_cost.py", [], "every preset beside SGM: ms/step, memory"),
    "checkpoint": ("checkpoint_overhead.py", [], "checkpoint size, write/read time, share of training"),
}

if __name__ == "__main__":
    sys.exit(dispatch(__doc__, COMMANDS))
