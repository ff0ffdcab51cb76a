"""In-context time-series forecasting with value-level scopes (docs/method.md §8).

Examples:
    >>> import tl_jacobian_scopes as tjs
    >>> from tl_jacobian_scopes import timeseries as ts
    >>> x = ts.lorenz(180, seed=0)
    >>> s = ts.serialize(x, digits=2)
    >>> r = ts.forecast_scope(model, s)
    >>> len(r.value_scores), round(r.forecast.std, 1) > 0
    (180, True)
"""

from .forecast import Forecast, ForecastMatrix, ForecastResult, aggregate_values, forecast_scope, token_map
from .generators import FAMILIES, brownian, logistic_map, lorenz, periodic
from .mechanism import MechanismStats, mechanism_stats, partial_spearman, spearman
from .serialize import Serialized, parse, serialize

__all__ = [
    "FAMILIES",
    "Forecast",
    "ForecastMatrix",
    "ForecastResult",
    "MechanismStats",
    "Serialized",
    "aggregate_values",
    "brownian",
    "forecast_scope",
    "logistic_map",
    "lorenz",
    "mechanism_stats",
    "parse",
    "partial_spearman",
    "periodic",
    "serialize",
    "spearman",
    "token_map",
]
