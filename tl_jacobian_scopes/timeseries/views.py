"""Views of forecast scopes: the paper's figure, a CircuitsVis page, and a steps × lag heatmap.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no backend
change) and draw text literally (``parse_math=False``); pages escape everything they show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..views.colors import scope_color
from ..views.components import circuitsvis_element, escape, heatmap
from ..views.page import ScopeView
from ..views.static import TEXT_STYLE, figure, require_matplotlib


def plot_forecast(r: Any) -> Any:
    """Two panels: value scores as bars with the series on a second axis (forecast step
    marked), and the forecast distribution in the series' units with its true value."""
    color = scope_color(r.scope)
    has_dist = r.forecast is not None
    fig = figure(figsize=(11, 6.4 if has_dist else 3.4))
    axes = fig.subplots(2 if has_dist else 1, 1, squeeze=False, gridspec_kw={"height_ratios": [1.3, 1][: 1 + has_dist]})
    ax = axes[0, 0]
    idx = np.arange(len(r.values))
    ax.bar(idx, r.value_scores, color=color, alpha=0.75, width=0.9)
    ax.set_xlabel("value index", **TEXT_STYLE)
    ax.set_ylabel(f"{r.scope} score per value ({r.score_kind})", color=color, **TEXT_STYLE)
    twin = ax.twinx()
    series = r.series.decode(r.series.values[: min(len(r.series), r.step + 1)])
    twin.plot(np.arange(len(series)), series, color="black", lw=1.0, marker=".", ms=3)
    twin.axvline(r.step, color="gray", ls="--", lw=1)
    if has_dist:
        twin.errorbar([r.step], [r.forecast.mean], yerr=[r.forecast.std], fmt="o", color=color, capsize=3)
    twin.set_ylabel("series", **TEXT_STYLE)
    ax.set_xlim(-1, r.step + 1.5)
    ax.set_title(f"{r.scope} scope of the forecast of the next value (value #{r.step}, counting from 0"
                 f"{'' if int(r.token) == 0 else f'; its token {int(r.token) + 1}'}) · {r.result.model_name}",
                 fontsize=10, parse_math=False)
    if has_dist:
        ax = axes[1, 0]
        f = r.forecast
        width = abs(f.scale) if f.scale else 1.0
        ax.bar(f.units, f.probs, width=width, color=color, alpha=0.75)
        if f.true is not None:
            ax.axvline(f.true, color="black", lw=1.5, label=f"true {f.true:.4g}")
        ax.axvline(f.mean, color=color, ls="--", lw=1, label=f"mean {f.mean:.4g} ± {f.std:.3g}")
        ax.set_xlabel("next value (series units)", **TEXT_STYLE)
        ax.set_ylabel("probability", **TEXT_STYLE)
        ax.legend(fontsize=8)
        lo, hi = np.quantile(f.units, [0, 1]) if f.probs.max() == 0 else _support(f)
        ax.set_xlim(lo, hi)
    fig.tight_layout()
    return fig


def _support(f: Any) -> tuple[float, float]:
    """The range holding 99.9% of the mass, padded, so the bars are visible."""
    order = np.argsort(f.units)
    cdf = np.cumsum(f.probs[order])
    units = f.units[order]
    lo = units[int(np.searchsorted(cdf, 0.0005))]
    hi = units[min(int(np.searchsorted(cdf, 0.9995)), len(units) - 1)]
    if f.true is not None:
        lo, hi = min(lo, f.true), max(hi, f.true)
    pad = 0.05 * (hi - lo) + abs(f.scale)
    return lo - pad, hi + pad


def plot_matrix(m: Any) -> Any:
    """Steps × lag heatmap of the value scores (lag 1 = the most recent value)."""
    require_matplotlib()
    grid = m.by_lag()
    fig = figure(figsize=(10, 0.12 * len(m) + 2.5))
    ax = fig.subplots()
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("scope", ["#ffffff", scope_color(m.scope)])
    finite = grid[np.isfinite(grid)]
    vmax = float(np.quantile(finite, 0.99)) if finite.size else 1.0
    im = ax.imshow(np.nan_to_num(grid), aspect="auto", cmap=cmap, vmin=0, vmax=vmax or None, interpolation="nearest",
                   extent=(0.5, grid.shape[1] + 0.5, m.steps[-1] + 0.5, m.steps[0] - 0.5))
    ax.set_xlabel("lag (values back from the forecast)", parse_math=False)
    ax.set_ylabel("forecast step", parse_math=False)
    ax.set_title(f"{m.scope} scope, steps × lag (colour saturates at the 99th percentile)", fontsize=10, parse_math=False)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def _value_tokens(r: Any) -> list[str]:
    return [r.series.value_text(v) + r.series.sep for v in r.values]


def forecast_sections(r: Any) -> list[str]:
    color = scope_color(r.scope)
    line = (f"<b>{escape(r.scope)}</b> scope of the forecast of the next value (value #{escape(r.step)}, counting from 0"
            f"{'' if int(r.token) == 0 else f'; its token {int(r.token) + 1}'}) · "
            f"{escape(r.result.model_name)} · scores per value ({escape(r.score_kind)}), max {float(r.value_scores.max()):.4g}")
    if r.forecast is not None:
        f = r.forecast
        line += (f"<br>forecast mean {f.mean:.4g} ± {f.std:.3g} (series units), mode {f.mode:.4g}"
                 + (f", true {f.true:.4g}" if f.true is not None else "") + ("" if r.y_norm is None else f" · confidence ‖y‖ {float(r.y_norm):.4g}"))
    header = f'<div class="tjs-header" style="border-left:4px solid {color}">{line}</div>'
    peak = float(r.value_scores.max()) if len(r.value_scores) else 0.0
    return [header, "<h4>Values coloured by influence on the forecast</h4>",
            circuitsvis_element("ColoredTokens", tokens=_value_tokens(r), values=r.value_scores.tolist(), minValue=0.0,
                maxValue=peak, positiveColor=color)]


def show_forecast(r: Any) -> ScopeView:
    """A page: the context's values coloured by influence, with the forecast's summary."""
    return ScopeView(forecast_sections(r), f"{r.scope} forecast scope")


def show_matrix(m: Any) -> ScopeView:
    """A page: steps × lag heatmap, then each step's values coloured by influence."""
    color = scope_color(m.scope)
    grid = np.nan_to_num(m.by_lag())
    import torch

    sections = [
        f'<div class="tjs-header" style="border-left:4px solid {color}"><b>{escape(m.scope)}</b> scope at '
        f"{len(m)} forecast steps · ‖y‖–std Spearman {m.ynorm_std_correlation():.3f}</div>",
        heatmap(torch.tensor(grid), [f"step {s}" for s in m.steps], [f"lag {l}" for l in range(1, grid.shape[1] + 1)],
                 color, "Forecast step × lag"),
    ]
    for r in list(m)[-3:]:
        sections += forecast_sections(r)
    return ScopeView(sections, f"{m.scope} forecast scope matrix")
