"""Ground truth and metrics (DESIGN §6): sample metrics now; the closed-form Gaussian SB and the
entropic-OT benchmark arrive with the ground-truth issue."""

from .metrics import energy_distance, sample_metrics, sliced_w2, w2_exact

__all__ = ["energy_distance", "sample_metrics", "sliced_w2", "w2_exact"]
