"""Self-contained HTML views of scope results, rendered by CircuitsVis offline.

CircuitsVis's own ``RenderedHTML`` picks between its inlined bundle and a CDN by probing
the internet (a blocking request, slow or hanging without a network). Here the bundled
JavaScript that ships inside the ``circuitsvis`` wheel is always inlined, once per page, so
a view renders in a notebook or a saved file with no network at all.
"""

from __future__ import annotations

import functools
import html
import uuid
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..results.scope_result import ScopeResult

#: The colour of each scope; scopes never share a colour scale.
SCOPE_COLORS = {"semantic": "#1f77b4", "temperature": "#d62728", "fisher": "#2ca02c"}
NORMALIZATION_TEXT = {
    "raw": "raw sensitivity ‖vᵀ∂y/∂a‖ (SPEC §3; deep layers look small because the residual norm grows)",
    "scaled": "scaled: sensitivity × ‖a‖ (× ‖a‖² for Fisher), comparable across layers",
}


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The CircuitsVis JavaScript bundle shipped in the wheel (no CDN)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "<\\/script>")


def _cv(element: str, **props) -> str:
    """A div and the call that renders a CircuitsVis element into it (bundle loaded once per page)."""
    from circuitsvis.utils.convert_props import convert_props

    div = f"tjs-cv-{uuid.uuid4().hex[:12]}"
    return (
        f'<div id="{div}" class="tjs-cv" data-element="{element}"></div>\n'
        f'<script>CircuitsVis.render("{div}", CircuitsVis.{element}, {convert_props(props)});</script>'
    )


def _color(value: float, peak: float, hex_color: str) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, value / peak))
    return f"rgba({r},{g},{b},{alpha:.3f})"


def _heatmap(
    grid: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], color: str, caption: str,
    marked_col: Optional[int] = None,
) -> str:
    """A plain HTML/CSS heatmap table (no JavaScript): rows x columns, one colour scale.

    The scale tops out at the 99th percentile of the cells (stated in the caption), so that a
    handful of extreme cells (e.g. the final residual at the explained position) does not
    wash out the rest; cells above it are drawn at full colour.
    """
    peak = float(grid.max()) if grid.numel() else 0.0
    top = peak
    if grid.numel() >= 100:
        top = float(torch.quantile(grid.float().flatten(), 0.99))
        top = top if top > 0 else peak
    scale_text = f"max {peak:.4g}" + (f"; colour saturates at the 99th percentile, {top:.4g}" if top < peak else "")
    head = "".join(
        f'<th class="col{" marked" if j == marked_col else ""}"><span>{html.escape(c)}</span></th>'
        for j, c in enumerate(col_labels)
    )
    body = []
    for i, label in enumerate(row_labels):
        cells = "".join(
            f'<td style="background:{_color(float(v), top, color)}" title="{html.escape(label)}, '
            f'{html.escape(col_labels[j])}: {float(v):.4g}"></td>'
            for j, v in enumerate(grid[i].tolist())
        )
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return (
        f'<figure class="tjs-heatmap"><figcaption>{html.escape(caption)} ({scale_text})</figcaption>'
        f'<table><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></figure>'
    )


def _header(result: ScopeResult) -> str:
    r = result
    explained = html.escape(repr(r.str_tokens[r.position]))
    line = (
        f"<b>{r.scope}</b> scope ({r.score_kind} scores) · {html.escape(r.model_name)}<br>"
        f"explaining position {r.position} ({explained}) → top prediction "
        f"<b>{html.escape(repr(r.predicted_str))}</b> p={r.predicted_prob:.3f}"
    )
    if r.scope == "semantic":
        line += f" · target <b>{html.escape(repr(r.target_str))}</b> p={r.target_prob:.3f}"
        if r.contrast_str is not None:
            line += f" vs <b>{html.escape(repr(r.contrast_str))}</b> p={r.contrast_prob:.3f}"
    return f'<div class="tjs-header" style="border-left:4px solid {SCOPE_COLORS.get(r.scope, "#444")}">{line}</div>'


def _token_labels(result: ScopeResult) -> list[str]:
    return [f"{i}:{t}" for i, t in enumerate(result.str_tokens)]


PARTS = ("tokens", "layers", "heads")


def result_sections(result: ScopeResult, normalization: str = "scaled", parts: Sequence[str] = PARTS) -> list[str]:
    """HTML sections for one result: header, then the token view and, when the result has
    internal maps, the layer view (layer × position) and the head view (layer × head)."""
    r = result
    color = SCOPE_COLORS.get(r.scope, "#444")
    sections = [_header(r)]
    if "tokens" in parts:
        sections += [
            f"<h4>Tokens coloured by {r.scope} score (0 … {float(r.scores.max()):.4g}); "
            f"explained position {r.position}</h4>",
            _cv("ColoredTokens", tokens=r.str_tokens, values=r.scores.tolist(), minValue=0.0,
                maxValue=float(r.scores.max()), positiveColor=color),
        ]
    if not r.has_internals:
        return sections
    n_layers = r.attn_scores.shape[0]
    norm_text = NORMALIZATION_TEXT[normalization]
    if "layers" in parts:
        resid = r.internal("layer", normalization)
        sections.append(
            _heatmap(resid, [f"L{i}" for i in range(n_layers)] + ["final"], _token_labels(r), color,
                     f"Layer × position: residual stream entering each block, {norm_text}", r.position)
        )
        # Per-site token colouring with site and layer selectors (CircuitsVis).
        sites = torch.zeros(r.n_tokens, 3, n_layers + 1)
        sites[:, 0] = resid.T
        sites[:, 1, :n_layers] = r.internal("attn", normalization).T
        sites[:, 2, :n_layers] = r.internal("mlp", normalization).T
        sections.append(f"<h4>Tokens by site and layer ({html.escape(norm_text)})</h4>")
        sections.append(
            _cv("TextNeuronActivations", tokens=r.str_tokens, activations=sites.tolist(),
                firstDimensionName="Site", secondDimensionName="Layer",
                firstDimensionLabels=["resid_pre", "attn_out", "mlp_out"],
                secondDimensionLabels=[str(i) for i in range(n_layers)] + ["final"])
        )
    if "heads" in parts:
        heads = r.internal("head", normalization)
        per_head = r.aggregate(heads)
        sections.append(
            _heatmap(per_head, [f"L{i}" for i in range(n_layers)], [f"H{h}" for h in range(per_head.shape[1])],
                     color, f"Layer × head (all positions combined), {norm_text}")
        )
        sections.append(f"<h4>Tokens by head ({html.escape(norm_text)})</h4>")
        sections.append(
            _cv("TextNeuronActivations", tokens=r.str_tokens, activations=heads.permute(2, 0, 1).tolist(),
                firstDimensionName="Layer", secondDimensionName="Head")
        )
    return sections


def comparison_sections(results: Sequence[ScopeResult], labels: Optional[Sequence[str]] = None) -> list[str]:
    """Several results on the same tokens, each on its own scale (divided by its own max)."""
    if not results:
        raise ValueError("compare() needs at least one result.")
    tokens = results[0].str_tokens
    if any(r.str_tokens != tokens for r in results):
        raise ValueError("compare() needs results over the same tokens (same prompt and model).")
    if labels is None:
        labels = []
        for r in results:
            label = r.scope + (f" {r.target_str!r}" if r.scope == "semantic" else "")
            label += f" vs {r.contrast_str!r}" if r.contrast_str is not None else ""
            labels.append(f"{label} @{r.position}")
    values = torch.stack([r.scores / r.scores.max() if r.scores.max() > 0 else r.scores for r in results], dim=1)
    kinds = ", ".join(f"{lab}: {r.score_kind}, max {float(r.scores.max()):.4g}" for lab, r in zip(labels, results))
    return [
        '<div class="tjs-header" style="border-left:4px solid #444"><b>Comparison</b> · each column is divided '
        "by its own maximum (scopes are never on one colour scale: Fisher scores are quadratic, "
        f"Semantic and Temperature are norms)<br>{html.escape(kinds)}</div>",
        _cv("ColoredTokensMulti", tokens=tokens, values=values.tolist(), labels=list(labels)),
    ]


STYLE = """
<style>
.tjs-view{font-family:system-ui,sans-serif;font-size:13px;max-width:1200px}
.tjs-header{padding:6px 10px;margin:8px 0;background:#f7f7f7}
.tjs-view h4{margin:14px 0 4px 0;font-weight:600}
.tjs-heatmap{margin:10px 0;overflow-x:auto}
.tjs-heatmap table{border-collapse:collapse;font-size:10px}
.tjs-heatmap td{width:14px;height:12px;border:1px solid #fff}
.tjs-heatmap th{font-weight:normal;padding:0 3px;text-align:right}
.tjs-heatmap th.col{height:70px;vertical-align:bottom}
.tjs-heatmap th.col span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.tjs-heatmap th.marked{background:#ffe9a8}
</style>
"""


def page(sections: Sequence[str], title: str = "Jacobian Scopes") -> str:
    """One HTML fragment: style, the CircuitsVis bundle (inlined once), then the sections."""
    return (
        f'<div class="tjs-view">{STYLE}<script>{circuitsvis_bundle()}</script>\n'
        + "\n".join(sections)
        + "</div>"
    )


class ScopeView:
    """A rendered view: displays itself in a notebook, and saves as one offline HTML file."""

    def __init__(self, sections: Sequence[str], title: str = "Jacobian Scopes"):
        self.sections = list(sections)
        self.title = title

    def _repr_html_(self) -> str:
        return page(self.sections, self.title)

    def to_html(self) -> str:
        """A complete standalone HTML document (all JavaScript inlined)."""
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"</head><body>{page(self.sections, self.title)}</body></html>"
        )

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def show(result: ScopeResult, normalization: str = "scaled", parts: Sequence[str] = PARTS) -> ScopeView:
    """The view of one result: ``parts`` among ``"tokens"``, ``"layers"``, ``"heads"``
    (the last two need a result computed with ``internals=True``)."""
    return ScopeView(result_sections(result, normalization, parts), f"{result.scope} scope")


def compare(*results: ScopeResult, labels: Optional[Sequence[str]] = None) -> ScopeView:
    """Several results (e.g. Semantic vs Fisher vs Temperature) side by side, each on its own scale.

    Example:
        >>> tjs.compare(tjs.semantic_scope(model, p), tjs.fisher_scope(model, p))  # doctest: +SKIP
    """
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    sections = comparison_sections(results, labels)
    for r in results:
        sections += result_sections(r)
    return ScopeView(sections, "Jacobian Scopes comparison")


def save_html(results: Union[ScopeResult, Sequence[ScopeResult]], path: Union[str, Path]) -> Path:
    """Write one self-contained HTML file (no CDN, no network) showing one or several results."""
    if isinstance(results, ScopeResult):
        return show(results).save(path)
    return compare(*results).save(path)


def matrix_view(matrix) -> ScopeView:
    """A :class:`ScopeMatrix`: explained positions x tokens heatmap, then per-position colouring."""
    first = matrix[0]
    color = SCOPE_COLORS.get(matrix.scope, "#444")
    rows = [f"{r.position}:{r.str_tokens[r.position]}→{r.target_str}" for r in matrix]
    labels = [f"{i}:{t}" for i, t in enumerate(matrix.str_tokens)]
    header = (
        f'<div class="tjs-header" style="border-left:4px solid {color}"><b>{matrix.scope}</b> scope '
        f"({matrix.score_kind} scores) at {len(matrix)} positions · {html.escape(first.model_name)}</div>"
    )
    values = matrix.scores.T  # [tokens, positions]
    peak = values.max(dim=0).values.clamp_min(1e-30)
    return ScopeView(
        [
            header,
            _heatmap(matrix.scores, rows, labels, color, "Explained position (row, → its target) × input token"),
            "<h4>Tokens coloured per explained position (each divided by its own maximum)</h4>",
            _cv("ColoredTokensMulti", tokens=matrix.str_tokens, values=(values / peak).tolist(), labels=rows),
        ],
        f"{matrix.scope} scope matrix",
    )
