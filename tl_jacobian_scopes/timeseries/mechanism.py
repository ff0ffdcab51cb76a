"""Parroting or recency? Statistics of where a forecast's influence falls (docs/method.md §8).

For a forecast of value ``n`` from values ``x_0..x_{n-1}`` with value scores ``s_j``:

- the *motif* before value ``j`` is the delay vector ``(x_{j-m}, ..., x_{j-1})`` (``m = dim``);
  the current motif is the one before the forecast, ``(x_{n-m}, ..., x_{n-1})``;
- its *shape distance* to the current motif is the Euclidean distance between the two motifs
  after z-normalising each (subtract its mean, divide by its standard deviation), divided by
  √m; its *level distance* is the difference of the motifs' means, divided by the series'
  standard deviation. Shape is thus separated from level: on a random walk nearby values
  share a level, not a shape;
- *eligible* values have a full motif (``j ≥ m``) and lie outside the recency window
  (lag ``n - j > recency``), so their motifs never overlap the current one.

Statistics (all computed on the eligible values unless said otherwise):

a. ``shape_partial``: partial Spearman correlation of score with shape similarity (minus the
   shape distance), controlling for lag (the ranks of lag regressed out of both ranks, then
   the residuals correlated); ``level_partial`` the same for level similarity;
   ``shape_given_level`` controls for lag and level similarity together (strict: on a
   periodic series shape and level both follow the phase, so it removes part of a real
   shape effect); ``naive_raw`` the plain Spearman correlation with raw-value motif
   similarity (L1 distance), the naive statistic, for contrast.
b. ``recency``: Spearman correlation of score with minus lag over all values with ``j ≥ m``;
   ``recent_share``: share of the score (over values with ``j ≥ m``) in the recency window,
   and ``recent_chance``: the window's share of those values.
c. ``knn_share``: share of the eligible values' score on the successors of the ``k`` motifs
   nearest in shape (value ``j`` for motif ``j``); ``knn_chance = k / n_eligible``;
   ``knn_lift`` their ratio (1: no preference).
d. The context-parroting forecast (Zhang & Gilpin): the value that followed the motif
   nearest in raw values (Euclidean) among all earlier motifs, ``parrot``; with a forecast
   distribution: the model's probability of it, ``parrot_prob``, its distance to the model's
   most probable value, ``parrot_mode_gap`` (written units), and ``parrot_agree`` (gap ≤ 2).
   With a true value: absolute errors of the parrot, the model's mean and persistence (the
   last value), in written units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from ..errors import OptionError, PromptError
from ..evaluation.patching import spearman as patching_spearman


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(x), dtype=np.float64)


def spearman(a: Any, b: Any) -> float:
    """Spearman correlation with average ranks for ties; NaN when either side is constant or
    there are fewer than 3 values (too few for a statistic over a series)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3:
        return float("nan")
    return patching_spearman(a, b)


def partial_spearman(a: np.ndarray, b: np.ndarray, controls: list[np.ndarray]) -> float:
    """Rank correlation of ``a`` and ``b`` after regressing the ranks of ``controls`` out of both."""
    if len(a) < len(controls) + 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    design = np.column_stack([np.ones(len(a))] + [_ranks(c) for c in controls])
    res = []
    for v in (a, b):
        r = _ranks(v)
        coef, *_ = np.linalg.lstsq(design, r, rcond=None)
        res.append(r - design @ coef)
    if res[0].std() < 1e-12 or res[1].std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(res[0], res[1])[0, 1])


def _znorm(motifs: np.ndarray) -> np.ndarray:
    centred = motifs - motifs.mean(axis=-1, keepdims=True)
    sd = centred.std(axis=-1, keepdims=True)
    return np.where(sd > 1e-12, centred / np.where(sd > 1e-12, sd, 1.0), 0.0)


@dataclass
class MechanismStats:
    """The statistics of one forecast step (module docstring)."""

    n_values: int
    n_eligible: int
    dim: int
    recency_window: int
    k: int
    shape_partial: float
    level_partial: float
    shape_given_level: float
    naive_raw: float
    recency: float
    recent_share: float
    recent_chance: float
    knn_share: float
    knn_chance: float
    knn_lift: float
    parrot: int
    parrot_prob: Optional[float] = None
    parrot_mode_gap: Optional[float] = None
    parrot_agree: Optional[bool] = None
    parrot_error: Optional[float] = None
    model_error: Optional[float] = None
    persistence_error: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def min_length(dim: int, recency: int) -> int:
    """Fewest context values the statistics need (a few eligible values beyond the window)."""
    return dim + recency + 3


def mechanism_stats(
    x: np.ndarray, scores: np.ndarray, dim: int = 3, recency: int = 5, k: int = 3, forecast: Any = None,
) -> MechanismStats:
    """Statistics of one forecast from context values ``x`` (written units) and their scores.

    Args:
        x: The context values ``x_0..x_{n-1}``.
        scores: One score per context value.
        dim: Motif (delay-embedding) dimension m.
        recency: Recency window: values with lag ≤ it are not eligible.
        k: Nearest motifs for ``knn_share``.
        forecast: The model's :class:`~.forecast.Forecast` (optional; adds part d).

    Raises:
        OptionError: Bad ``dim``/``recency``/``k``.
        PromptError: A context too short for the embedding.
    """
    for name, value, low in (("dim", dim, 1), ("recency", recency, 0), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise OptionError(f"{name} must be an int ≥ {low}, got {value!r}.")
    if recency < dim - 1:
        raise OptionError(f"recency ({recency}) must be ≥ dim - 1 ({dim - 1}) so no eligible motif overlaps the current one.")
    x = np.asarray(x, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(x)
    if n < min_length(dim, recency):
        raise PromptError(
            f"The context has {n} values; motifs of dim={dim} outside a recency window of {recency} need at least "
            f"{min_length(dim, recency)}: use a longer series, a later step, or smaller dim/recency."
        )
    idx = np.arange(dim, n)  # values with a full motif
    lags = n - idx
    motifs = np.stack([x[j - dim : j] for j in idx])
    current = x[n - dim :]
    spread = x.std() if x.std() > 0 else 1.0
    shape_d = np.linalg.norm(_znorm(motifs) - _znorm(current[None])[0], axis=1) / np.sqrt(dim)
    level_d = np.abs(motifs.mean(axis=1) - current.mean()) / spread
    raw_l1 = np.abs(motifs - current).sum(axis=1)
    raw_l2 = np.linalg.norm(motifs - current, axis=1)
    s = scores[idx]
    elig = lags > recency
    se, lag_e = s[elig], lags[elig]
    n_e = int(elig.sum())
    kk = min(k, n_e)
    nearest = np.argsort(shape_d[elig], kind="stable")[:kk]
    total_e = se.sum()
    knn_share = float(se[nearest].sum() / total_e) if total_e > 0 else float("nan")
    knn_chance = kk / n_e
    total = s.sum()
    recent = ~elig
    parrot = int(round(x[idx[int(np.argmin(raw_l2))]]))
    stats = MechanismStats(
        n_values=n, n_eligible=n_e, dim=dim, recency_window=recency, k=kk,
        shape_partial=partial_spearman(se, -shape_d[elig], [lag_e]),
        level_partial=partial_spearman(se, -level_d[elig], [lag_e]),
        shape_given_level=partial_spearman(se, -shape_d[elig], [lag_e, -level_d[elig]]),
        naive_raw=spearman(se, -raw_l1[elig]),
        recency=spearman(s, -lags),
        recent_share=float(s[recent].sum() / total) if total > 0 else float("nan"),
        recent_chance=float(recent.mean()),
        knn_share=knn_share, knn_chance=knn_chance,
        knn_lift=knn_share / knn_chance if np.isfinite(knn_share) else float("nan"),
        parrot=parrot,
    )
    if forecast is not None:
        stats.parrot_prob = forecast.prob(parrot)
        stats.parrot_mode_gap = float(abs(forecast.mode_value - parrot))
        stats.parrot_agree = bool(stats.parrot_mode_gap <= 2)
        if forecast.true_value is not None:
            mean_written = float((forecast.probs * forecast.values).sum())
            stats.parrot_error = float(abs(parrot - forecast.true_value))
            stats.model_error = float(abs(mean_written - forecast.true_value))
            stats.persistence_error = float(abs(x[-1] - forecast.true_value))
    return stats
