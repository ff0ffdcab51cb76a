"""The results of a forecast scope: one step (:class:`ForecastResult`) and many (:class:`ForecastMatrix`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..views.page import ScopeView

import numpy as np

from ..errors import ScopeError
from ..results.base import ResultRows, ViewableResult
from ..results.scope_result import ScopeResult
from .serialize import Serialized
from .distribution import Forecast


@dataclass
class ForecastResult(ViewableResult):
    """A scope of one forecast step, at the level of the series' values.

    Attributes:
        series: The serialized series.
        step: Index of the forecast value (``len(series)``: the value after the series).
        scope: ``"temperature"``, ``"semantic"`` or ``"fisher"``.
        result: The token-level :class:`ScopeResult` it was built from.
        values: The context values (as written), ``series.values[:step]``.
        value_scores: One score per context value (its tokens combined, module docstring).
        lags: ``step - index``: 1 for the most recent value.
        sep_scores: Per context value, the combined score of its separator token(s).
        bos_score: The BOS token's score (0 without BOS).
        forecast: The model's distribution over the forecast value (None if not computed).
        token: Which token of the forecast value is explained (0: its first).
    """

    series: Serialized
    step: int
    scope: str
    result: ScopeResult
    values: np.ndarray
    value_scores: np.ndarray
    lags: np.ndarray
    sep_scores: np.ndarray
    bos_score: float
    forecast: Optional[Forecast] = None
    token: int = 0

    @property
    def score_kind(self) -> str:
        return self.result.score_kind

    @property
    def y_norm(self) -> Optional[float]:
        """‖y‖ at the explained position (Temperature's effective inverse temperature)."""
        value = self.result.params.get("y_norm")
        if value is None and self.forecast is not None:
            value = self.forecast.y_norm
        return None if value is None else float(value)

    @property
    def true_value(self) -> Optional[int]:
        return int(self.series.values[self.step]) if self.step < len(self.series) else None

    def to_dataframe(self) -> Any:
        """One row per context value: index, lag, value (written and in units), score, separator score."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        idx = np.arange(len(self.values))
        return pd.DataFrame({
            "index": idx, "lag": self.lags, "value": self.values, "value_units": self.series.decode(self.values),
            "score": self.value_scores, "sep_score": self.sep_scores,
        })

    def mechanism(self, dim: int = 3, recency: int = 5, k: int = 3) -> Any:
        """Parroting-versus-recency statistics of this step (docs/method.md §8); see
        :func:`tl_jacobian_scopes.timeseries.mechanism.mechanism_stats`."""
        from .mechanism import mechanism_stats

        return mechanism_stats(self.series.values[: self.step].astype(np.float64), self.value_scores,
                               dim=dim, recency=recency, k=k, forecast=self.forecast)

    def plot(self) -> Any:
        """The paper's figure: influence bars over the context with the series on a second
        axis and the forecast marked, and the forecast distribution with the true value."""
        from .views import plot_forecast

        return plot_forecast(self)

    def show(self) -> "ScopeView":
        """A CircuitsVis view: the values coloured by influence, with the forecast."""
        from .views import show_forecast

        return show_forecast(self)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "scope": self.scope, "token": self.token, "value_scores": self.value_scores.tolist(),
                "sep_scores": self.sep_scores.tolist(), "bos_score": self.bos_score, "y_norm": self.y_norm,
                "forecast": None if self.forecast is None else self.forecast.to_dict()}


@dataclass
class ForecastMatrix(ResultRows[ForecastResult], ViewableResult):
    """Many forecast steps of one series (``steps="all"`` or a list): steps × values."""

    steps_results: list[ForecastResult] = field(default_factory=list)

    def _rows(self) -> list[ForecastResult]:
        return self.steps_results

    @property
    def series(self) -> Serialized:
        return self.steps_results[0].series

    @property
    def scope(self) -> str:
        return self.steps_results[0].scope

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self.steps_results]

    @property
    def value_scores(self) -> np.ndarray:
        """``[n_steps, n_values]``: row i holds step i's value scores (zero from the step on)."""
        out = np.zeros((len(self), len(self.series)))
        for i, r in enumerate(self.steps_results):
            out[i, : len(r.value_scores)] = r.value_scores
        return out

    def by_lag(self, max_lag: Optional[int] = None) -> np.ndarray:
        """``[n_steps, max_lag]``: column ``l - 1`` holds the score at lag ``l`` (NaN where none)."""
        max_lag = max_lag or max(r.step for r in self.steps_results)
        out = np.full((len(self), max_lag), np.nan)
        for i, r in enumerate(self.steps_results):
            n = min(max_lag, len(r.value_scores))
            out[i, :n] = r.value_scores[::-1][:n]
        return out

    def ynorm_std_correlation(self) -> float:
        """Spearman correlation between ‖y‖ and the forecast's std across the steps."""
        from .mechanism import spearman

        pairs = [(r.y_norm, r.forecast.std) for r in self.steps_results if r.forecast is not None and r.y_norm is not None]
        if len(pairs) < 3:
            return float("nan")
        a, b = np.array(pairs).T
        return spearman(a, b)

    def mechanism(self, dim: int = 3, recency: int = 5, k: int = 3) -> Any:
        """One row of mechanism statistics per step (steps too short for the embedding are skipped)."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        rows = []
        for r in self.steps_results:
            if r.step < dim + recency + 3:
                continue
            rows.append({"step": r.step, **r.mechanism(dim=dim, recency=recency, k=k).to_dict()})
        return pd.DataFrame(rows)

    def to_dataframe(self) -> Any:
        """One row per (step, context value)."""
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        frames = [r.to_dataframe().assign(step=r.step) for r in self.steps_results]
        return pd.concat(frames, ignore_index=True)

    def plot(self) -> Any:
        """Steps × lag heatmap of the value scores."""
        from .views import plot_matrix

        return plot_matrix(self)

    def show(self) -> "ScopeView":
        """A CircuitsVis view: the steps × values heatmap."""
        from .views import show_matrix

        if not self.steps_results:
            raise ScopeError("This ForecastMatrix holds no steps: there is nothing to show (forecast_scope(..., "
                             "steps=[...]) fills one).")

        return show_matrix(self)
