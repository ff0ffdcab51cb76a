"""Self-contained HTML views of scope results, rendered by CircuitsVis offline.

CircuitsVis's own ``RenderedHTML`` picks between its inlined bundle and a CDN by probing
the internet (a blocking request, slow or hanging without a network). Here the bundled
JavaScript that ships inside the ``circuitsvis`` wheel is always inlined, once per page, so
a view renders in a notebook or a saved file with no network at all.

Everything that reaches the page is escaped, because token strings, targets, labels, model
names and parameters are data (a prompt, a word-level tokenizer, an edited JSON file) and may
hold markup: text and attributes go through :func:`html.escape`; the JSON handed to
CircuitsVis inside ``<script>`` has ``<``, ``>``, ``&``, U+2028 and U+2029 written as
``\\uXXXX`` escapes, so no string can close the script block; and token strings are
HTML-escaped before CircuitsVis sees them, because its ``Token`` component inserts each token
with ``dangerouslySetInnerHTML`` (its hover tooltip therefore shows such tokens escaped).
"""

from __future__ import annotations

import functools
import html
import json
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

if TYPE_CHECKING:
    from ..results.scope_matrix import ScopeMatrix

import torch
from torch import Tensor

from ..errors import OptionError, ScopeError
from ..results.scope_result import ScopeResult, check_normalization, write_output

#: The colour of each scope; scopes never share a colour scale.
SCOPE_COLORS = {"semantic": "#1f77b4", "temperature": "#d62728", "fisher": "#2ca02c"}
NORMALIZATION_TEXT = {
    "raw": "raw sensitivity ‖vᵀ∂y/∂a‖ (docs/method.md; deep layers look small: the residual norm grows)",
    "scaled": "scaled: sensitivity × ‖a‖ (× ‖a‖² for Fisher), comparable across layers",
}


@functools.lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The CircuitsVis JavaScript bundle shipped in the wheel (no CDN)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "<\\/script>")


#: Characters that could end a ``<script>`` block, open a comment, or end a JavaScript line;
#: inside JSON they only occur in strings, where ``\\uXXXX`` means the same character.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """``value`` as a JavaScript literal that is safe to place inside ``<script>``.

    Tensors and arrays become lists. NaN and infinities are written as the JavaScript
    literals ``NaN``/``Infinity`` (valid in a script, unlike in a JSON file).
    """
    text = json.dumps(_plain(value), ensure_ascii=False)
    for char, escape in _SCRIPT_UNSAFE.items():
        text = text.replace(char, escape)
    return text


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _token_html(tokens: Sequence[str]) -> list[str]:
    """Tokens as CircuitsVis must receive them: it inserts each one as HTML (innerHTML)."""
    return [html.escape(t, quote=False) for t in tokens]


def _cv(element: str, **props: Any) -> str:
    """A div and the call that renders a CircuitsVis element into it (bundle loaded once per page)."""
    div = f"tjs-cv-{uuid.uuid4().hex[:12]}"
    props = {k: v for k, v in props.items() if v is not None}
    if "tokens" in props:
        props["tokens"] = _token_html(props["tokens"])
    return (
        f'<div id="{div}" class="tjs-cv" data-element="{html.escape(element)}"></div>\n'
        f"<script>CircuitsVis.render({script_json(div)}, CircuitsVis[{script_json(element)}], "
        f"{script_json(props)});</script>"
    )


def _esc(value: Any) -> str:
    """Any value as escaped HTML text (safe in element content and quoted attributes)."""
    return html.escape(str(value))


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
    marked_col = marked_col if isinstance(marked_col, int) else None
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
        f'<figure class="tjs-heatmap"><figcaption>{html.escape(caption)} ({html.escape(scale_text)})</figcaption>'
        f'<table><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></figure>'
    )


def _prob(p: Optional[float]) -> str:
    return f"{p:.3f}" if isinstance(p, (int, float)) else _esc(p)


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        items = [_param_text(v) for v in value[:6]]
        return "[" + ", ".join(items) + (", …" if len(value) > 6 else "") + "]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _header(result: ScopeResult) -> str:
    r = result
    explained = _esc(repr(r.str_tokens[r.position])) if isinstance(r.position, int) else "?"
    line = (
        f"<b>{_esc(r.scope)}</b> scope ({_esc(r.score_kind)} scores) · {_esc(r.model_name)}<br>"
        f"explaining position {_esc(r.position)} ({explained}) → top prediction "
        f"<b>{_esc(repr(r.predicted_str))}</b> p={_prob(r.predicted_prob)}"
    )
    if r.scope == "semantic":
        line += f" · target <b>{_esc(repr(r.target_str))}</b> p={_prob(r.target_prob)}"
        if r.contrast_str is not None:
            line += f" vs <b>{_esc(repr(r.contrast_str))}</b> p={_prob(r.contrast_prob)}"
    if r.params:
        # The settings that produced the scores (rank, probes, y_norm, ...), so a saved page is self-describing.
        params = ", ".join(f"{k}={_param_text(v)}" for k, v in r.params.items())
        line += f'<br><span class="tjs-params">{_esc(params)}</span>'
    return f'<div class="tjs-header" style="border-left:4px solid {SCOPE_COLORS.get(r.scope, "#444444")}">{line}</div>'


def _token_labels(result: ScopeResult) -> list[str]:
    return [f"{i}:{t}" for i, t in enumerate(result.str_tokens)]


PARTS = ("tokens", "layers", "heads")


def _check_parts(parts: Sequence[str]) -> None:
    if isinstance(parts, str) or not all(p in PARTS for p in parts):
        raise OptionError(f"parts must be a list of names among {PARTS}, got {parts!r}.")


def result_sections(result: ScopeResult, normalization: str = "scaled", parts: Sequence[str] = PARTS) -> list[str]:
    """HTML sections for one result: header, then the token view and, when the result has
    internal maps, the layer view (layer × position) and the head view (layer × head).

    Raises:
        OptionError: ``normalization`` is not ``"raw"``/``"scaled"`` or ``parts`` names an unknown part.
    """
    check_normalization(normalization)
    _check_parts(parts)
    r = result
    color = SCOPE_COLORS.get(r.scope, "#444444")
    sections = [_header(r)]
    if "tokens" in parts:
        sections += [
            f"<h4>Tokens coloured by {_esc(r.scope)} score (0 … {float(r.scores.max()):.4g}); "
            f"explained position {_esc(r.position)}</h4>",
            _cv("ColoredTokens", tokens=r.str_tokens, values=r.scores.tolist(), minValue=0.0,
                maxValue=float(r.scores.max()), positiveColor=color),
        ]
    if not r.has_internals:
        return sections
    assert r.attn_scores is not None  # has_internals
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
    """Several results on the same tokens, each on its own scale (divided by its own max).

    Raises:
        ScopeError: No results, results over different tokens, or not one label per result.
    """
    if not results:
        raise ScopeError("compare() needs at least one result: pass ScopeResults, e.g. compare(r1, r2).")
    if not all(isinstance(r, ScopeResult) for r in results):
        raise ScopeError(
            "compare() takes ScopeResults; got "
            f"{sorted({type(r).__name__ for r in results if not isinstance(r, ScopeResult)})} "
            "(for a ScopeMatrix, compare its rows, e.g. compare(m[0], m[1]), or use m.show())."
        )
    tokens = results[0].str_tokens
    if any(r.str_tokens != tokens for r in results):
        raise ScopeError(
            "compare() needs results over the same tokens: compute every scope on the same prompt with the same model."
        )
    if labels is not None:
        if isinstance(labels, str) or len(labels) != len(results):
            raise ScopeError(
                f"compare() needs one label per result: got {len(results)} results and labels={labels!r}."
            )
        labels = [str(label) for label in labels]
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
        _cv("ColoredTokensMulti", tokens=tokens, values=values.tolist(), labels=labels),
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
.tjs-params{color:#555;font-size:11px}
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
        self.sections = list(sections)  # HTML fragments, already escaped by whoever built them
        self.title = str(title)  # plain text: escaped when the page is written

    def _repr_html_(self) -> str:
        return page(self.sections, self.title)

    def to_html(self) -> str:
        """A complete standalone HTML document (all JavaScript inlined)."""
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"</head><body>{page(self.sections, self.title)}</body></html>"
        )

    def save(self, path: Union[str, Path]) -> Path:
        text = self.to_html()
        return write_output(path, lambda p: p.write_text(text, encoding="utf-8"))


def show(result: ScopeResult, normalization: str = "scaled", parts: Sequence[str] = PARTS) -> ScopeView:
    """The view of one result: ``parts`` among ``"tokens"``, ``"layers"``, ``"heads"``
    (the last two need a result computed with ``internals=True``).

    Raises:
        OptionError: ``normalization`` is not one of ``"raw"``, ``"scaled"``, or ``parts`` is unknown.
    """
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


def matrix_view(matrix: "ScopeMatrix") -> ScopeView:
    """A :class:`ScopeMatrix`: explained positions x tokens heatmap, then per-position colouring."""
    first = matrix[0]
    color = SCOPE_COLORS.get(matrix.scope, "#444444")
    rows = [f"{r.position}:{r.str_tokens[r.position]}→{r.target_str}" for r in matrix]
    labels = [f"{i}:{t}" for i, t in enumerate(matrix.str_tokens)]
    header = (
        f'<div class="tjs-header" style="border-left:4px solid {color}"><b>{_esc(matrix.scope)}</b> scope '
        f"({_esc(matrix.score_kind)} scores) at {len(matrix)} positions · {_esc(first.model_name)}</div>"
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
