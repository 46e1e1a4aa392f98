"""Ground truth and metrics (DESIGN §6): the closed-form Gaussian SB and its IPF iterates
(:mod:`.gaussian`), the entropic-OT Gaussian-mixture benchmark (:mod:`.eot`) and the official pairs of
Gushchin et al. from their downloaded files (:mod:`.official`), the metrics (:mod:`.metrics`) and the
benchmark harness (:mod:`.runner`, ``sbdiff bench``)."""

from .eot import EOTPair, make_pair
from .gaussian import GaussianBridge, IPFIterate, entropic_cross_cov, gaussian_ipf, random_gaussian_bridge, w2_map
from .metrics import (bures_wasserstein2, bw2_uvp, cbw2_uvp, energy_distance, fit_gaussian, noise_floor,
                      path_straightness, plan_metrics, sample_metrics, sinkhorn_w2, sliced_w2, w2_exact)
from .official import load_official_pair

__all__ = ["EOTPair", "make_pair", "load_official_pair", "GaussianBridge", "IPFIterate", "entropic_cross_cov",
           "gaussian_ipf", "random_gaussian_bridge", "w2_map", "bures_wasserstein2", "bw2_uvp", "cbw2_uvp",
           "energy_distance", "fit_gaussian", "noise_floor", "path_straightness", "plan_metrics", "sample_metrics",
           "sinkhorn_w2", "sliced_w2", "w2_exact"]
