"""Evaluation of a trained model against data: likelihoods and sample metrics (DESIGN §3, §6.3).

On images the likelihoods are reported in bits/dim of the discrete data (the dequantisation bound of
:meth:`sbdiff.model.PathVAE.bits_per_dim`) beside an isotropic-Gaussian baseline with the same
accounting (:func:`isotropic_gaussian_nll`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ._utils import append_dims, gaussian_log_prob
from .bench.metrics import sample_metrics
from .model import PathVAE
from .objectives import simulate_controlled
from .solvers import make_grid

__all__ = ["evaluate", "isotropic_gaussian_nll", "drift_matching_residual", "consistency_warning",
           "RESIDUAL_MAX_DIM", "label_split", "label_classifier", "label_scores", "conditional_nll", "forecast_samples",
           "forecast_nll", "forecast_eval"]

#: Largest dimension for which :func:`evaluate` reports the kernel estimate of the drift-matching
#: residual (a kernel score estimate degrades fast with the dimension).
RESIDUAL_MAX_DIM = 4


def isotropic_gaussian_nll(fit_x: np.ndarray, eval_x: np.ndarray) -> np.ndarray:
    """NLL (nats per sample) of ``eval_x`` ``(M, D)`` under the maximum-likelihood ``N(μ, s²I)`` of
    ``fit_x`` ``(N, D)``: ``μ`` the mean image, ``s²`` the mean squared deviation over all pixels;
    ``−log p(x) = D/2·log(2π s²) + ‖x − μ‖²/(2 s²)``. Returns shape ``(M,)``."""
    fit_x = np.asarray(fit_x, np.float64)
    mu = fit_x.mean(0)
    s2 = float(((fit_x - mu) ** 2).mean())
    centred = torch.as_tensor(np.asarray(eval_x, np.float64) - mu)
    return -gaussian_log_prob(centred, s2).numpy()


@torch.no_grad()
def drift_matching_residual(model: PathVAE, data: np.ndarray, *, n_paths: int = 4096, n_points: int = 1000,
                            num_steps: int = 32, seed: int = 0, score=None) -> dict:
    """The drift-matching residual ``r(t) = E_{q_t} ‖z + ẑ − g ∇log q_t‖²`` along a time grid (DESIGN §2).

    ``r ≡ 0`` exactly when the decoder is the time reversal of the encoder; only then is the PF-ODE
    velocity ``f + ½ g (z − ẑ)`` the probability flow of the encoder's marginals ``q_t``, and the
    PF-ODE ``nll`` the likelihood of the pair. With the prior loss ``KL(q_T ‖ p_T)``, ``½∫ r dt`` is the
    gap between the path ELBO and that likelihood (``E[nelbo] − E[nll] = ½∫ r dt`` for a consistent
    pair), in nats.

    ``q_t`` is the law of the encoder's paths (:func:`~sbdiff.objectives.simulate_controlled`, the
    reference part exact) from data points moved to ``t_min`` by the reference. Its score, unless
    ``score`` gives it, is a kernel estimate: the mixture over ``n_paths`` simulated points ``x_j`` at
    an earlier grid time ``s`` of the Gaussian transitions ``N(a(x_j + g(s) z_j (t − s)), v)`` to ``t``
    (the reference's ``a = a(s, t)``, ``v = v(s, t)``, the control frozen at ``s``), with ``s`` the
    latest grid time whose ``v`` reaches Scott's bandwidth ``h² = n^{−2/(d+4)} σ̂²``; it is evaluated on
    ``n_points`` independent paths. The estimate is consistent as ``n_paths`` grows and ``v`` shrinks;
    its own error adds to ``r`` (an upward bias), so a residual is only as small as the estimate is
    sharp (reliable in low dimension: :data:`RESIDUAL_MAX_DIM`). Where ``q_t`` is sharper than the
    kernel (the reference's variance from 0 below ``h²``: near ``t_min``, where the estimate
    measures mostly its own error: 2 300 at ``t = 0.002`` on the checkerboard for SGM and SB-FBSDE
    alike) ``r`` is reported but left out of ``integral``, which then runs from ``t_from``.

    Parameters
    ----------
    model : a model with a Gaussian prior (the decoder and encoder as trained).
    data : array ``(N, d)``, data coordinates: the starting points.
    n_paths, n_points : paths of the kernel estimate; paths on which ``r`` is averaged.
    num_steps : steps of the quadratic grid on ``[t_min, T]`` (or the model's own ``sde_grid``).
    score : callable ``(x (B, d), t (B,)) -> (B, d)``, optional: ``∇log q_t`` in model coordinates,
        when known in closed form (tests).

    Returns
    -------
    dict with ``t`` ``(K,)`` (grid times after the first), ``residual`` ``(K,)`` (``r(t)``, model
    coordinates), ``integral`` (``½∫ r dt`` from ``t_from``, trapezoid, nats) and ``t_from``.
    """
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    dtype, device = model.data_mean.dtype, model.data_mean.device
    ref = model.reference
    rng = np.random.default_rng(seed)
    data = np.asarray(data, np.float64).reshape(len(data), -1)
    rows = data[rng.choice(len(data), n_paths + n_points, replace=len(data) < n_paths + n_points)]
    x0 = model.dequantize_model(model.to_model(torch.as_tensor(rows, dtype=dtype, device=device)), generator=gen)
    mean, std = ref.transition(x0, 0.0, model.t_min)
    x = mean + append_dims(std, x0.ndim) * torch.randn(x0.shape, generator=gen, dtype=dtype, device=device)
    ts = model.sde_grid if model.sde_grid is not None else make_grid("quadratic", model.t_min, ref.T, num_steps)
    ts = ts.to(dtype=dtype, device=device)
    xs, zs = simulate_controlled(model.encoder, x, ts, generator=gen, exact_reference=True)
    src, src_z, ys, ys_z = xs[:, :n_paths], zs[:, :n_paths], xs[:, n_paths:], zs[:, n_paths:]
    d = x.shape[1]
    residual = torch.zeros(len(ts) - 1, dtype=torch.float64)
    sharp = torch.zeros(len(ts) - 1, dtype=torch.bool)  # where the kernel is wider than the smoothing so far
    for k in range(1, len(ts)):
        y, t = ys[k], ts[k].expand(n_points)
        g = append_dims(ref.g(t), 2)
        if score is not None:
            s = score(y, t)
        else:
            h2 = n_paths ** (-2.0 / (d + 4)) * float(src[k].var(0).mean())
            sharp[k - 1] = float(ref.transition_var(ts[0] * 0, ts[k])) < h2
            j = k - 1
            while j > 0 and float(ref.transition_var(ts[j], ts[k])) < h2:
                j -= 1
            a = torch.exp(ref.log_mean_coeff(ts[j], ts[k]))
            v = ref.transition_var(ts[j], ts[k])
            mu = a * (src[j] + ref.g(ts[j]) * src_z[j] * (ts[k] - ts[j]))  # (n_paths, d)
            logw = -torch.cdist(y, mu).pow(2) / (2 * v)  # (n_points, n_paths)
            w = torch.softmax(logw, dim=1)
            s = (w @ mu - y) / v
        a_field = ys_z[k] + model.decoder.control(y, t)
        residual[k - 1] = float((a_field - g * s).pow(2).sum(1).mean())
    dt = (ts[1:] - ts[:-1]).double().cpu()
    r = torch.where(sharp, torch.zeros_like(residual), residual)
    integral = float(0.5 * (0.5 * (torch.cat([r[:1], r[:-1]]) + r) * dt).sum())
    first = int((~sharp).nonzero()[0]) if bool((~sharp).any()) else len(sharp)
    t_from = float(ts[first]) if first < len(sharp) else float(ts[-1])
    return {"t": ts[1:].double().cpu().numpy(), "residual": residual.numpy(), "integral": integral,
            "t_from": t_from}


def consistency_warning(res: dict) -> str | None:
    """One line when the PF-ODE ``nll`` exceeds the path bound ``nelbo`` by more than their combined
    standard error ``√(se_nll² + se_nelbo²)`` (keys of :func:`evaluate`), else ``None``.

    ``nelbo`` bounds the NLL of the SDE sampler from above; ``nll`` is the likelihood of the PF-ODE,
    which is the sampler's only when the decoder reverses the encoder (:func:`drift_matching_residual`).
    ``nll > nelbo`` can only come from that inconsistency, and then ``nelbo`` is the number to trust.
    """
    if "nll" not in res or "nelbo" not in res:
        return None
    gap = res["nll"] - res["nelbo"]
    se = math.hypot(res["nll_stderr"], res["nelbo_stderr"])
    if gap <= se:
        return None
    extra = f"; drift-matching residual ½∫r dt = {res['dm_residual']:.3g} nats" if "dm_residual" in res else ""
    return (f"nll {res['nll']:.4g} exceeds nelbo {res['nelbo']:.4g} by {gap:.3g} nats (> {se:.2g}, their combined "
            f"standard error): the probability flow is not consistent with the sampler (the decoder does not "
            f"reverse the encoder{extra}); trust nelbo, an upper bound of the sampler's NLL, not nll")


def evaluate(model: PathVAE, data: np.ndarray, *, n_nll: int = 1000, n_samples: int = 2000,
             nfe: int = 500, elbo_time_points: int = 64, seed: int = 0, progress: bool = False,
             samples: np.ndarray | None = None, exact: bool | None = None) -> dict[str, float]:
    """Score ``model`` on ``data`` (shape ``(N, d)``, data coordinates).

    Returns a dict with (likelihoods only when the prior is Gaussian, not for a bridge between two
    data sets)
    ``nll`` (PF-ODE negative log-likelihood, nats per sample, on ``n_nll`` points),
    ``nll_stderr``, ``nll_bpd`` (bits per dimension), ``nelbo`` (negative path ELBO, nats per sample,
    same points; an upper bound of the SDE model's NLL), ``nelbo_stderr``,
    ``nll_minus_nelbo``, ``consistent`` (false when ``nll`` exceeds ``nelbo`` by more than their
    combined standard error: :func:`consistency_warning`), ``dm_residual`` (``d <=``
    :data:`RESIDUAL_MAX_DIM`, vectors: ``½∫ r dt`` of :func:`drift_matching_residual` from
    ``dm_residual_from``, nats),
    and ``w2``, ``sliced_w2``, ``energy_distance`` of ``n_samples`` SDE samples (``nfe`` steps)
    against the data; pass ``samples`` (shape ``(M, d)``) to score samples already drawn instead.

    ``exact`` chooses the divergence (exact trace or Hutchinson); default: exact for ``d <= 64``
    except on images, where a U-Net's ``D`` vector-Jacobian products per evaluation cost too much and
    Hutchinson's unbiased estimator (one Rademacher probe per point; its variance is in the stderr)
    is used for both the PF-ODE NLL and the ELBO.

    Images with dequantisation (``model.dequant_step = Δ > 0``): the ``n_nll`` points are dequantised
    once, ``x + Δu`` (seeded), and both likelihoods are of those points; ``nll_bpd`` and ``nelbo_bpd``
    are bits/dim of the discrete data (:meth:`~sbdiff.model.PathVAE.bits_per_dim`, an upper bound of
    ``−log₂ P(x)/D``), and ``gauss_bpd`` is the same bound for the isotropic Gaussian ``N(μ, s²I)``
    fitted to all of ``data`` dequantised (:func:`isotropic_gaussian_nll`). Continuous images get the
    same keys with ``Δ = 0`` (differential bits/dim).
    """
    model = model.eval()
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = np.asarray(data, np.float64).reshape(len(data), -1)
    x = data[rng.choice(len(data), min(n_nll, len(data)), replace=False)]
    images = model.image_shape is not None
    if exact is None and images:
        exact = False
    step = model.dequant_step
    if step > 0:  # one seeded draw of the dequantisation noise, shared by every likelihood below
        x = x + step * rng.random(x.shape)
    xt = torch.as_tensor(x, dtype=torch.float32, device=model.data_mean.device)
    start = time.monotonic()
    out = {}
    n = len(x)
    if not model.bridge:  # a bridge's prior is a sample set: no density, no likelihoods
        nll = -model.log_prob(xt, generator=gen, exact=exact).double()
        nelbo = -model.elbo(xt, n_time=elbo_time_points, generator=gen, exact=exact).double()
        out.update({
            "nll": float(nll.mean()),
            "nll_stderr": float(nll.std() / math.sqrt(n)),
            "nll_bpd": float(model.bits_per_dim(nll.mean())),
            "nelbo": float(nelbo.mean()),
            "nelbo_stderr": float(nelbo.std() / math.sqrt(n)),
            "nelbo_bpd": float(model.bits_per_dim(nelbo.mean())),
            "n_eval": n,
            "nll_minus_nelbo": float(nll.mean() - nelbo.mean()),
        })
        if model.dim <= RESIDUAL_MAX_DIM and not images:
            resid = drift_matching_residual(model, data, seed=seed)
            out["dm_residual"], out["dm_residual_from"] = resid["integral"], resid["t_from"]
        out["consistent"] = consistency_warning(out) is None
    if samples is None:
        samples = model.sample(n_samples, nfe=nfe, generator=gen, progress=progress).cpu().numpy()
    out.update({"n_samples": len(samples), "nfe": int(nfe)})
    if images:
        fit_x = data + step * rng.random(data.shape) if step > 0 else data
        gauss = isotropic_gaussian_nll(fit_x, x)
        out["gauss_nll"] = float(gauss.mean())
        out["gauss_bpd"] = float(model.bits_per_dim(float(gauss.mean())))
        out["dequant_step"] = step
    samples = np.asarray(samples).reshape(len(samples), -1)
    out.update(sample_metrics(samples, data, seed=seed))
    out["eval_seconds"] = round(time.monotonic() - start, 2)
    return out


# -- conditional models (DESIGN §4.6) --------------------------------------------------------------
def label_split(labels: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` of a stratified 75 % / 25 % split of labelled data ``(N,)``."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=0.25, random_state=seed, stratify=labels)


def label_classifier(data: np.ndarray, labels: np.ndarray, *, seed: int = 0):
    """A classifier of the real data for scoring class-conditional samples: an RBF support-vector
    machine (:class:`sklearn.svm.SVC`, ``gamma = "scale"``) fitted on the training rows of
    :func:`label_split` of ``(data, labels)`` (``(N, D)``, ``(N,)``); returns ``(classifier, accuracy
    on the held-out test rows)``."""
    from sklearn.svm import SVC

    train, test = label_split(labels, seed=seed)
    clf = SVC(gamma="scale").fit(data[train], labels[train])
    return clf, float((clf.predict(data[test]) == labels[test]).mean())


def label_scores(model: PathVAE, data: np.ndarray, labels: np.ndarray, *, per_class: int = 100,
                 guidance=(0.0,), nfe: int = 500, seed: int = 0, progress: bool = False) -> dict:
    """Scores of a class-conditional model (DESIGN §4.6): for each guidance weight ``w``, ``per_class``
    samples of every class, classified by :func:`label_classifier` fitted on the real data
    ``(N, D)`` with labels ``(N,)``: ``accuracy_w{w}`` (the share classified as the class asked for)
    and ``fd_w{w}`` (the mean over classes of the Fréchet distance ``BW2²`` between the Gaussian fits of
    a class's samples and of its real points, data units; ``fd_floor``: the same between two random
    halves of each real class, the metric's own sampling noise at a similar number of points).
    ``classifier_accuracy``: the classifier's accuracy on the real held-out split."""
    from .bench.metrics import bures_wasserstein2, fit_gaussian

    clf, acc = label_classifier(data, labels, seed=seed)
    classes = np.unique(labels)
    out: dict = {"classifier_accuracy": acc, "per_class": per_class}
    rng = np.random.default_rng(seed)
    floor = []
    for k in classes:
        rows = rng.permutation(np.flatnonzero(labels == k))
        half = len(rows) // 2
        floor.append(bures_wasserstein2(*fit_gaussian(data[rows[:half]]), *fit_gaussian(data[rows[half:]])))
    out["fd_floor"] = float(np.mean(floor))
    for w in guidance:
        gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
        asked = np.repeat(classes, per_class)
        x = model.sample(len(asked), cond=asked, guidance=float(w), nfe=nfe, generator=gen, progress=progress)
        x = x.cpu().numpy().reshape(len(asked), -1)
        out[f"accuracy_w{w:g}"] = float((clf.predict(x) == asked).mean())
        out[f"fd_w{w:g}"] = float(np.mean([bures_wasserstein2(*fit_gaussian(x[asked == k]),
                                                               *fit_gaussian(data[labels == k])) for k in classes]))
    return out


def conditional_nll(model: PathVAE, x: np.ndarray, cond, *, seed: int = 0, exact: bool | None = None,
                    batch_size: int = 1000) -> dict:
    """Conditional and unconditional likelihood of points ``x`` ``(N, D)`` with contexts ``cond``:
    ``nll`` = ``−log p(x | c)`` and ``nll_null`` = ``−log p(x | ∅)`` (the null context: the model a run
    with ``cond.p_uncond > 0`` trains alongside), nats per sample, each with its standard error, and in
    bits/dim (dequantised images: the discrete data's bound, :meth:`PathVAE.bits_per_dim`)."""
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    pts = model.dequantize(torch.as_tensor(x, dtype=torch.float32, device=model.data_mean.device), generator=gen)
    out = {}
    for key, c in (("nll", cond), ("nll_null", "null")):
        g = torch.Generator(device=model.data_mean.device).manual_seed(seed)
        nll = -model.log_prob(pts, cond=c, exact=exact, generator=g, batch_size=batch_size).double().cpu().numpy()
        out[key] = float(nll.mean())
        out[f"{key}_se"] = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
        out[f"{key}_bpd"] = float(model.bits_per_dim(out[key]))
    return out


def forecast_samples(model: PathVAE, history: np.ndarray, n: int, *, nfe: int = 500, seed: int = 0,
                     ode: bool = False, progress: bool = False, scaling: str = "standard",
                     anchor: str = "none") -> np.ndarray:
    """``n`` sample paths of the next ``H`` steps after each history window (``(W, L − H, d)``, data
    units) from a series model (``cond.window = L``, ``cond.horizon = H``; DESIGN §4.6): returns
    ``(W, n, H, d)`` in data units. ``scaling`` is the run's ``cond.scaling``: with ``mean`` each history
    is divided by its own scale (:func:`sbdiff.series.window_scale`) and its paths multiplied back;
    ``anchor`` is ``cond.anchor`` (``last``: the model generates the change since the last history
    row, which is added back; :func:`sbdiff.conditioning.scaled_windows`)."""
    from .conditioning import scaled_windows, unscaled_forecast

    history, _, scale = scaled_windows(np.asarray(history, dtype=np.float64), None, scaling)
    W, past, d = history.shape
    ctx = np.repeat(history.reshape(W, past * d), n, axis=0)
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    draws = []
    for chunk in np.array_split(np.arange(len(ctx)), max(1, math.ceil(len(ctx) / 20_000))):
        z = model.sample_prior(len(chunk), generator=gen)
        draws.append(model.decode(z, cond=ctx[chunk], nfe=nfe, ode=ode, generator=gen, progress=progress).cpu().numpy())
    out = np.concatenate(draws).astype(np.float64)
    return unscaled_forecast(out.reshape(W, n, model.dim // d, d), history, scale, anchor)


def forecast_nll(model: PathVAE, history: np.ndarray, future: np.ndarray, *, seed: int = 0,
                 scaling: str = "standard", anchor: str = "none") -> dict:
    """:func:`conditional_nll` of the futures ``(N, H, d)`` given their histories ``(N, L − H, d)``, data
    units: the model's density of the scaled (and anchored) future, brought back to data units by the
    Jacobian of the scaling, ``−log p(y) = −log p_model(y / s − a) + H Σ_j log s_j`` (the anchor is a
    shift, of Jacobian 1); bits/dim from the corrected nats."""
    from .conditioning import scaled_windows
    from .series import flatten_windows

    h_model, f_model, scale = scaled_windows(history, future, scaling, anchor)
    nll = conditional_nll(model, flatten_windows(f_model), flatten_windows(h_model), seed=seed)
    shift = float(np.log(scale).sum(axis=(1, 2)).mean() * future.shape[1])
    for key in ("nll", "nll_null"):
        nll[key] += shift
        nll[f"{key}_bpd"] = float(model.bits_per_dim(nll[key]))
    return nll


def forecast_eval(model: PathVAE, history: np.ndarray, future: np.ndarray, *, n: int = 100, nfe: int = 500,
                  seed: int = 0, progress: bool = False, scaling: str = "standard",
                  anchor: str = "none") -> tuple[dict, np.ndarray]:
    """Forecast scores of a series model on windows ``history (N, L − H, d)``, ``future (N, H, d)``
    (data units; :func:`sbdiff.conditioning.series_test_windows`): CRPS per entry, CRPS-sum,
    normalised CRPS, the published tables' CRPS and CRPS-sum (GluonTS's weighted quantile loss) and
    the coverage of the 50 % / 90 % central intervals from ``n`` sample paths per window
    (:func:`sbdiff.series.forecast_scores`). Returns the scores and the samples ``(N, n, H, d)``."""
    from .series import forecast_scores

    samples = forecast_samples(model, history, n, nfe=nfe, seed=seed, progress=progress, scaling=scaling,
                               anchor=anchor)
    return forecast_scores(samples, future), samples
