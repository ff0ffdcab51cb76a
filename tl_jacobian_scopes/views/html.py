"""Self-contained HTML views of scope results, rendered by CircuitsVis offline.

CircuitsVis's own ``RenderedHTML`` picks between its inlined bundle and a CDN by probing
the internet (a blocking request, slow or hanging without a network). Here the bundled
JavaScript that ships inside the ``circuitsvis`` wheel (1.3 MB) is inlined instead, so a view
renders in a notebook or a saved file with no network at all:

* a saved page (:meth:`ScopeView.save`, :func:`save_html`) holds exactly one copy;
* in a notebook, only the first view displayed by this Python process (or
  :func:`init_notebook`) carries it; later views wait for ``window.CircuitsVis`` and render.
  The copy is saved with that first output, so an exported notebook renders offline in page
  order. Re-running that cell carries it again (where the front end sends cell ids:
  JupyterLab, Notebook 7, VS Code); if that output is cleared, call :func:`init_notebook`.

View data is compact: numbers travel as integers of 1/10000 of their array's largest
magnitude (runs of zeros collapsed), decoded and rounded to 4 significant digits in the page;
heatmaps are drawn by a few lines of JavaScript from that data instead of one HTML cell each.

Everything that reaches the page is escaped, because token strings, targets, labels, model
names and parameters are data (a prompt, a word-level tokenizer, an edited JSON file) and may
hold markup: text and attributes go through :func:`html.escape`; the JSON handed to
CircuitsVis inside ``<script>`` has ``<``, ``>``, ``&``, U+2028 and U+2029 written as
``\\uXXXX`` escapes, so no string can close the script block; and token strings are
HTML-escaped before CircuitsVis sees them, because its ``Token`` component inserts each token
with ``dangerouslySetInnerHTML`` (its hover tooltip therefore shows such tokens escaped).
"""

from __future__ import annotations

import html
import math
import reprlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

if TYPE_CHECKING:
    from ..results.scope_matrix import ScopeMatrix

import torch

from ..errors import OptionError, ScopeError
from ..results.scope_result import ScopeResult, check_normalization
from .colors import NORMALIZATION_TEXT as NORMALIZATION_TEXT, SCOPE_COLORS as SCOPE_COLORS  # re-exported
from .colors import scope_color

from .components import (  # noqa: F401  (re-exported: the view kit's old home)
    LEVELS, _cv, _esc, _fresh_mount_ids, _heatmap, _heatmap_figure, _heatmap_spec, _mount_id, _pack, _plain,
    _round, _token_html, circuitsvis_bundle, circuitsvis_element, escape, heatmap, script_json,
)
from .page import LOADER as LOADER, STYLE as STYLE, ScopeView as ScopeView, _notebook as _notebook  # re-exported
from .page import init_notebook as init_notebook, notebook_html as notebook_html, page as page


def _prob(p: Optional[float]) -> str:
    return f"{p:.3f}" if isinstance(p, (int, float)) else escape(p)


def _param_text(value: Any, depth: int = 0) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        if depth >= 3:  # bounded like the reprlib fallback: a 900-deep list cannot recurse
            return "[…]"
        items = [_param_text(v, depth + 1) for v in value[:6]]
        return "[" + ", ".join(items) + (", …" if len(value) > 6 else "") + "]"
    # reprlib: bounded depth and size, so a deeply nested or huge value cannot recurse or blow up.
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist, _SHORT_REPR.maxstring = 3, 4, 6, 60


def _header(result: ScopeResult) -> str:
    r = result
    explained = escape(repr(r.str_tokens[r.position])) if isinstance(r.position, int) else "?"
    line = (
        f"<b>{escape(r.scope)}</b> scope ({escape(r.score_kind)} scores) · {escape(r.model_name)}<br>"
        f"explaining position {escape(r.position)} ({explained}) → top prediction "
        f"<b>{escape(repr(r.predicted_str))}</b> p={_prob(r.predicted_prob)}"
    )
    if r.scope == "semantic":
        line += f" · target <b>{escape(repr(r.target_str))}</b> p={_prob(r.target_prob)}"
        if r.contrast_str is not None:
            line += f" vs <b>{escape(repr(r.contrast_str))}</b> p={_prob(r.contrast_prob)}"
    if r.params:
        # The settings that produced the scores (rank, probes, y_norm, ...), so a saved page is self-describing.
        params = ", ".join(f"{k}={_param_text(v)}" for k, v in r.params.items())
        line += f'<br><span class="tjs-params">{escape(params)}</span>'
    return f'<div class="tjs-header" style="border-left:4px solid {scope_color(r.scope)}">{line}</div>'


def _token_labels(result: ScopeResult) -> list[str]:
    return [f"{i}:{t}" for i, t in enumerate(result.str_tokens)]


PARTS = ("tokens", "layers", "heads")


def flatten_parts(parts: Sequence[Union[str, Sequence[str]]]) -> tuple[str, ...]:
    """``("tokens", "heads")`` from ``show("tokens", "heads")`` or ``show(["tokens", "heads"])``;
    anything else is kept as given for :func:`_check_parts` to refuse by name."""
    flat: list[Any] = []
    for part in parts:
        flat.extend(part if isinstance(part, (list, tuple)) else [part])
    return tuple(flat)


def _check_parts(parts: Sequence[str]) -> None:
    if isinstance(parts, str) or not all(p in PARTS for p in parts):
        hint = ""
        if any(p in ("raw", "scaled") for p in ([parts] if isinstance(parts, str) else parts)):
            hint = " (for the normalization, pass normalization='raw' or 'scaled' by keyword)"
        raise OptionError(f"parts must be names among {PARTS}, got {parts!r}{hint}.")


def result_sections(result: ScopeResult, normalization: str = "scaled", parts: Sequence[str] = PARTS) -> list[str]:
    """HTML sections for one result: header, then the token view and, when the result has
    internal maps, the layer view (layer × position) and the head view (layer × head).

    Raises:
        OptionError: ``normalization`` is not ``"raw"``/``"scaled"`` or ``parts`` names an unknown part.
    """
    check_normalization(normalization)
    _check_parts(parts)
    r = result
    color = scope_color(r.scope)
    sections = [_header(r)]
    if "tokens" in parts:
        sections += [
            f"<h4>Tokens coloured by {escape(r.scope)} score (0 … {float(r.scores.max()):.4g}); "
            f"explained position {escape(r.position)}</h4>",
            circuitsvis_element("ColoredTokens", tokens=r.str_tokens, values=r.scores, minValue=0.0,
                maxValue=float(r.scores.max()), positiveColor=color, paddingBottom=0),
        ]
    if not r.has_internals:
        return sections
    assert r.attn_scores is not None  # has_internals
    n_layers = r.attn_scores.shape[0]
    norm_text = NORMALIZATION_TEXT[normalization]
    if "layers" in parts:
        resid = r.internal("layer", normalization)
        sections.append(
            heatmap(resid, [f"L{i}" for i in range(n_layers)] + ["final"], _token_labels(r), color,
                     f"Layer × position: residual stream entering each block, {norm_text}", r.position)
        )
        # Per-site token colouring with site and layer selectors (CircuitsVis).
        sites = torch.zeros(r.n_tokens, 3, n_layers + 1)
        sites[:, 0] = resid.T
        sites[:, 1, :n_layers] = r.internal("attn", normalization).T
        sites[:, 2, :n_layers] = r.internal("mlp", normalization).T
        sections.append(f"<h4>Tokens by site and layer ({html.escape(norm_text)})</h4>")
        sections.append(
            circuitsvis_element("TextNeuronActivations", tokens=r.str_tokens, activations=sites,
                firstDimensionName="Site", secondDimensionName="Layer",
                firstDimensionLabels=["resid_pre", "attn_out", "mlp_out"],
                secondDimensionLabels=[str(i) for i in range(n_layers)] + ["final"])
        )
    if "heads" in parts:
        heads = r.internal("head", normalization)
        per_head = r.aggregate(heads)
        sections.append(
            heatmap(per_head, [f"L{i}" for i in range(n_layers)], [f"H{h}" for h in range(per_head.shape[1])],
                     color, f"Layer × head (all positions combined), {norm_text}")
        )
        sections.append(f"<h4>Tokens by head ({html.escape(norm_text)})</h4>")
        sections.append(
            circuitsvis_element("TextNeuronActivations", tokens=r.str_tokens, activations=heads.permute(2, 0, 1),
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
        circuitsvis_element("ColoredTokensMulti", tokens=tokens, values=values, labels=labels),
    ]


def show(result: ScopeResult, normalization: str = "scaled", parts: Optional[Sequence[str]] = None) -> ScopeView:
    """The view of one result: ``parts`` among ``"tokens"``, ``"layers"``, ``"heads"``
    (all it has by default; the last two need a result computed with ``internals=True``).

    Raises:
        OptionError: ``normalization`` is not one of ``"raw"``, ``"scaled"``, or ``parts`` is unknown.
        ScopeError: ``parts`` asks for ``"layers"``/``"heads"`` of a result without internal maps.
    """
    if parts is None:
        parts = PARTS if result.has_internals else ("tokens",)
    else:
        _check_parts(parts)
        missing = [p for p in parts if p != "tokens" and not result.has_internals]
        if missing:
            raise ScopeError(f"This result has no internal maps for {missing}: rerun the scope with internals=True.")
    return ScopeView(result_sections(result, normalization, parts), f"{result.scope} scope", parts)


def compare(*results: ScopeResult, labels: Optional[Sequence[str]] = None) -> ScopeView:
    """Several results (e.g. Semantic vs Fisher vs Temperature) side by side, each on its own scale.

    Examples:
        >>> p = "The capital of France is"
        >>> view = tjs.compare(tjs.semantic_scope(model, p), tjs.fisher_scope(model, p))
    """
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    sections = comparison_sections(results, labels)
    for r in results:
        sections += result_sections(r)
    return ScopeView(sections, "Jacobian Scopes comparison", [f"comparison of {len(results)} results"])


def save_html(*results: Any, path: Union[str, Path, None] = None, labels: Optional[Sequence[str]] = None) -> Path:
    """Write one self-contained HTML file (no CDN, no network) showing one or several results.

    Takes results as :func:`compare` does; the file goes to ``path``. The older form with a
    list and the path last, ``save_html([r1, r2], "view.html")``, still works.

    Examples:
        >>> r1 = r = tjs.semantic_scope(model, "The capital of France is")
        >>> r2 = tjs.temperature_scope(model, "The capital of France is")
        >>> path = tjs.save_html(r1, r2, path="comparison.html")
        >>> path = tjs.save_html(r, path="one.html")

    Raises:
        OptionError: No path, or two of them.
    """
    items = list(results)
    if items and isinstance(items[-1], (str, Path)):
        if path is not None:
            raise OptionError("save_html() got two paths: pass it once, e.g. save_html(r1, r2, path='view.html').")
        path = items.pop()
    if path is None:
        raise OptionError("save_html() needs a path: save_html(r1, r2, path='view.html').")
    if len(items) == 1 and hasattr(items[0], "show") and not isinstance(items[0], ScopeResult) and labels is None:
        # A ScopeMatrix, ScopeBatch (a list, but of any prompts), GenerationResult, PatchingResult: its own view.
        view: ScopeView = items[0].show()
        return view.save(path)
    if len(items) == 1 and isinstance(items[0], (list, tuple)):
        items = list(items[0])
    if len(items) == 1 and isinstance(items[0], ScopeResult) and labels is None:
        return show(items[0]).save(path)
    return compare(*items, labels=labels).save(path)


def matrix_view(matrix: "ScopeMatrix") -> ScopeView:
    """A :class:`ScopeMatrix`: explained positions x tokens heatmap, then per-position colouring.

    Both are drawn in the page from one copy of the scores and tokens (the token colouring
    divides each row by its own maximum).
    """
    first = matrix[0]
    color = scope_color(matrix.scope)
    rows = [f"{r.position}:{r.str_tokens[r.position]}→{r.target_str}" for r in matrix]
    header = (
        f'<div class="tjs-header" style="border-left:4px solid {color}"><b>{escape(matrix.scope)}</b> scope '
        f"({escape(matrix.score_kind)} scores) at {len(matrix)} positions · {escape(first.model_name)}</div>"
    )
    spec, scale_text = _heatmap_spec(matrix.scores, color)
    spec.update(rows=rows, tokens=_token_html(matrix.str_tokens))
    heatmap_id, tokens_id = _mount_id(), _mount_id()
    return ScopeView(
        [
            header,
            _heatmap_figure(heatmap_id, "Explained position (row, → its target) × input token", scale_text),
            "<h4>Tokens coloured per explained position (each divided by its own maximum)</h4>",
            f'<div id="{tokens_id}" class="tjs-cv" data-element="ColoredTokensMulti"></div>\n'
            f"<script>tjsMatrix({script_json(heatmap_id)}, {script_json(tokens_id)}, {script_json(spec)});</script>",
        ],
        f"{matrix.scope} scope matrix",
        [f"{len(matrix)} positions x {len(matrix.str_tokens)} tokens"],
    )
