"""Static figures for papers (matplotlib, an optional extra: ``pip install tl_jacobian_scopes[plot]``)."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from matplotlib.figure import Figure

import numpy as np

from ..errors import MissingPackageError
from ..results.scope_result import ScopeResult, check_normalization
from ..results.files import write_output
from .colors import NORMALIZATION_TEXT, scope_color


def figure(**kwargs: Any) -> "Figure":
    """A matplotlib Figure that belongs to no pyplot state and no backend.

    Building it with :class:`matplotlib.figure.Figure` instead of ``pyplot`` leaves the
    user's backend and open figures alone (``matplotlib.use`` would switch the backend of
    the whole session); ``savefig`` picks a canvas for the file format by itself.
    """
    made: "Figure" = _notebook_figure_class()(**kwargs)
    return made


def require_matplotlib() -> None:
    """Raise :class:`MissingPackageError` with the install hint when matplotlib is missing.

    Called first by every figure-making function, before any ``matplotlib`` import, so that a
    missing package is never a raw ``ModuleNotFoundError``.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingPackageError("Static figures need matplotlib: pip install 'tl_jacobian_scopes[plot]'") from exc


@functools.lru_cache(maxsize=None)
def _notebook_figure_class() -> type:
    require_matplotlib()
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        """Displays itself in Jupyter (as a PNG) without pyplot, so exactly once per display."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            return buffer.getvalue()

    return NotebookFigure


#: Text options for everything we draw: token strings are data, and "$...$", "^" or "_" in
#: them must not be parsed as mathtext (which raises on e.g. "$^_$" when the figure is drawn).
TEXT_STYLE = {"parse_math": False}


#: Height of one layer row in the heatmaps (inches), and the least a tick label needs (points).
ROW_INCHES, LABEL_POINTS = 0.16, 9.0


def _layer_ticks(ax: Any, labels: list[str], row_inches: float) -> None:
    """Label every layer row, or every k-th when rows are too thin for a label each."""
    step = max(1, math.ceil(LABEL_POINTS / (row_inches * 72)))
    rows = list(range(0, len(labels), step))
    ax.set_yticks(rows, [labels[i] for i in rows], fontsize=7)


def plot(result: ScopeResult, normalization: str = "scaled") -> "Figure":
    """A figure: token scores as bars (explained position marked), and with internals the
    layer × position and layer × head heatmaps (rows are layers, as in the HTML view; the
    figure grows with the number of layers so that their labels do not overlap).

    Returns:
        A :class:`matplotlib.figure.Figure`, not registered with pyplot: a notebook displays
        it (once) when it is a cell's value; save it with ``fig.savefig(path)``. Token strings
        are drawn literally (no mathtext), whatever ``$``, ``^`` or ``_`` they hold.

    Examples:
        >>> r = tjs.semantic_scope(model, "The capital of France is")
        >>> fig = r.plot()
        >>> fig  # a cell's last line: shows it once  # doctest: +ELLIPSIS
        <...Figure...>

    Raises:
        OptionError: ``normalization`` is not ``"raw"`` or ``"scaled"``.
    """
    require_matplotlib()
    from matplotlib.colors import LinearSegmentedColormap

    check_normalization(normalization)
    r = result
    color = scope_color(r.scope)
    cmap = LinearSegmentedColormap.from_list("scope", ["#ffffff", color])
    width = max(6.0, 0.32 * r.n_tokens + 2)
    heights = [2.6]
    n_layers = 0
    row_inches = ROW_INCHES
    if r.has_internals:
        assert r.attn_scores is not None  # has_internals
        n_layers = r.attn_scores.shape[0]
        row_inches = min(ROW_INCHES, 14.0 / (n_layers + 1))  # very deep models: thinner rows, fewer labels
        heights += [max(2.0, row_inches * (n_layers + 1)) + 1.4, max(1.4, row_inches * n_layers) + 0.9]
    fig = figure(figsize=(width, sum(heights)))
    axes = fig.subplots(len(heights), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    labels = [repr(t)[1:-1] for t in r.str_tokens]
    ax = axes[0, 0]
    bars = ax.bar(range(r.n_tokens), r.scores.detach().float().cpu().tolist(), color=color)
    bars[r.position].set_edgecolor("black")
    bars[r.position].set_linewidth(1.5)
    ax.set_xticks(range(r.n_tokens), labels, rotation=70, fontsize=8, **TEXT_STYLE)
    ax.set_ylabel(f"{r.scope} ({r.score_kind})", **TEXT_STYLE)
    what = f"target {r.target_str!r}" if r.scope == "semantic" else f"prediction {r.predicted_str!r}"
    if r.contrast_str is not None:
        what += f" vs {r.contrast_str!r}"
    ax.set_title(
        f"{r.scope} scope · position {r.position} ({r.str_tokens[r.position]!r}) · {what}", fontsize=10, **TEXT_STYLE
    )
    if r.has_internals:
        layer_names = [str(i) for i in range(n_layers)]
        resid = r.internal("layer", normalization).detach().float().cpu().numpy()
        ax = axes[1, 0]
        vmax = float(np.quantile(resid, 0.99)) or None  # as in the HTML view: a few cells would wash out the rest
        im = ax.imshow(resid, aspect="auto", cmap=cmap, interpolation="nearest", vmin=0, vmax=vmax)
        _layer_ticks(ax, layer_names + ["final"], row_inches)
        ax.set_xticks(range(r.n_tokens), labels, rotation=70, fontsize=8, **TEXT_STYLE)
        ax.axvline(r.position, color="black", lw=0.8, ls=":")
        ax.set_ylabel("layer (resid_pre)")
        ax.set_title(
            f"layer × position, {NORMALIZATION_TEXT[normalization]}\n(colour saturates at the 99th percentile, "
            f"{vmax or 0.0:.4g}; max {resid.max():.4g})", fontsize=8, **TEXT_STYLE,
        )
        fig.colorbar(im, ax=ax, fraction=0.02)
        heads = r.aggregate(r.internal("head", normalization)).detach().float().cpu().numpy()
        ax = axes[2, 0]
        im = ax.imshow(heads, aspect="auto", cmap=cmap, interpolation="nearest")  # rows = layers, as in HTML
        _layer_ticks(ax, layer_names, row_inches)
        ax.set_xticks(range(heads.shape[1]), [f"H{h}" for h in range(heads.shape[1])], fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title("layer × head, all positions combined", fontsize=8, **TEXT_STYLE)
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    return fig


def save_png(result: ScopeResult, path: Union[str, Path], normalization: str = "scaled", dpi: int = 150) -> Path:
    """Write :func:`plot` to a PNG file (without touching pyplot or the matplotlib backend)."""
    fig = plot(result, normalization)
    return write_output(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))  # PNG whatever the suffix


# The private names the package used before these were public (kept for one release).
_figure = figure
_TEXT = TEXT_STYLE
