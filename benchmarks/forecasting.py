"""How well do the conditional presets forecast? exchange_rate_nips (GluonTS's CRPS and CRPS-sum, the
published protocol) and statsmodels' macrodata, each beside a seasonal-naive and a VAR baseline on the
same windows (docs/results.md, "forecasting"). Run alone: the budgets are wall-clock.

    python benchmarks/forecasting.py gluonts --methods sgm vsdm --seeds 0 1 2 --minutes 4
    python benchmarks/forecasting.py gluonts --markdown       # the table from the result files
    python benchmarks/forecasting.py macrodata --minutes 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from _entry import dispatch  # noqa: E402

COMMANDS = {
    "gluonts": ("forecast_gluonts.py", [], "a GluonTS data set (default exchange_rate_nips)"),
    "macrodata": ("conditional_forecast.py", [], "statsmodels' US macro series"),
}

if __name__ == "__main__":
    sys.exit(dispatch(__doc__, COMMANDS))
