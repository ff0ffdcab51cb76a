"""The app's own HTML: clickable coloured tokens, the summary line, messages, and the
library's views framed in a sandboxed iframe. Every string from data is escaped."""

from __future__ import annotations

import html
from typing import Any, Optional

from ..results.scope_result import ScopeResult
from ..views.html import SCOPE_COLORS, ScopeView

#: Runs once in the page (Gradio's ``js_on_load``): a click on a token sends its position.
#: Each click carries its number (counted per page, on ``window`` so that it survives a re-render):
#: the server shows a click's result only if no later click came meanwhile (the last click wins).
CLICK_JS = (
    "element.addEventListener('click', function (e) {"
    " var t = e.target.closest('[data-pos]');"
    " if (t) { window.tjsClicks = (window.tjsClicks || 0) + 1;"
    " trigger('click', {position: parseInt(t.getAttribute('data-pos'), 10), click: window.tjsClicks}); } });"
)

TOKEN_CSS = """
.tjs-tokens{font-family:ui-monospace,monospace;font-size:14px;line-height:1.9;white-space:pre-wrap}
.tjs-tok{cursor:pointer;border-radius:3px;padding:1px 0;border:1px solid transparent}
.tjs-tok:hover{border-color:#888}
.tjs-tok.tjs-explained,.tjs-ctok.tjs-explained{outline:2px solid #000;outline-offset:1px}
.tjs-ctok{border-radius:3px;padding:1px 0}
.tjs-compare-row{margin:6px 0 10px 0}
.tjs-compare-label{font-size:13px;margin-bottom:2px}
.tjs-legend{font-size:12px;color:#555;margin-top:4px}
.tjs-scale{display:inline-block;width:120px;height:10px;border:1px solid #ccc;vertical-align:middle}
.tjs-internals h4{margin:12px 0 2px 0;font-weight:600;font-size:13px}
.tjs-hm-wrap{overflow-x:auto;max-width:100%}
.tjs-hm{border-collapse:collapse;font-size:10px;line-height:1;width:auto!important;margin:0!important}
.tjs-hm td{width:12px;min-width:12px;height:12px;border:1px solid #fff!important;padding:0!important}
.tjs-hm th{font-weight:normal;padding:0 3px!important;text-align:right;white-space:nowrap;font-size:10px!important;
 border:0!important;background:none}
.tjs-hm tr{border:0!important;background:none!important}
.tjs-hm th.col{vertical-align:bottom;padding:2px 0!important}
.tjs-hm th.col span{display:inline-block;writing-mode:vertical-rl;transform:rotate(180deg);white-space:pre;
 max-height:110px;overflow:hidden}
.tjs-hm th.marked{background:#ffe9a8!important}
.tjs-msg{padding:8px 12px;border-radius:4px}
.tjs-error{background:#fdecea;color:#7a1c15;border-left:4px solid #c0392b}
.tjs-info{background:#eef5fb;border-left:4px solid #1f77b4}
"""


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _visible(token: str) -> str:
    """A token as shown in a line of text: line breaks and tabs made visible."""
    return token.replace("\n", "↵").replace("\t", "⇥")


def _token_spans(result: ScopeResult, clickable: bool = True) -> tuple[str, float, tuple[int, int, int]]:
    """The tokens as coloured spans (the scope's own colour, scaled to the largest score), the
    largest score and the colour; clickable spans carry their position for the click script."""
    r, g, b = _rgb(SCOPE_COLORS.get(result.scope, "#444444"))
    scores = result.scores.detach().float().cpu().tolist()
    peak = max((s for s in scores if s == s), default=0.0) or 1.0
    spans = []
    for i, (token, score) in enumerate(zip(result.str_tokens, scores)):
        alpha = max(0.0, min(1.0, score / peak)) if score == score else 0.0
        cls = "tjs-tok" if clickable else "tjs-ctok"
        cls += " tjs-explained" if i == result.position else ""
        title = f"{i}: {token!r} score {score:.4g}"
        spans.append(
            f'<span class="{cls}" data-pos="{i}" data-score="{score:.6g}" title="{html.escape(title)}" '
            f'style="background:rgba({r},{g},{b},{alpha:.3f})">{html.escape(_visible(token))}</span>'
        )
    return "".join(spans), peak, (r, g, b)


def _scale_html(rgb: tuple[int, int, int], peak: float) -> str:
    r, g, b = rgb
    return (f'0 <span class="tjs-scale" style="background:linear-gradient(to right,rgba({r},{g},{b},0),'
            f'rgba({r},{g},{b},1))"></span> {peak:.3g}')


def token_html(result: ScopeResult) -> str:
    """The prompt's tokens coloured by score (each scope in its own colour, scaled to the
    maximum), the explained position outlined; each token carries its position for clicks."""
    spans, peak, rgb = _token_spans(result)
    legend = (f'<div class="tjs-legend" data-peak="{peak:.6g}">colour: influence on the prediction at position '
              f"{result.position}, {_scale_html(rgb, peak)} (the largest score; hover a token for its score)</div>")
    return f'<div class="tjs-tokens" data-scope="{html.escape(result.scope)}">{spans}</div>{legend}'


def compare_html(results: list[ScopeResult]) -> str:
    """Several scopes on one prompt, one row each: the tokens in that scope's own colour, scaled
    to its own largest score, with that scale beside the row (no controls; scopes never share a
    scale: Fisher scores are quadratic, Semantic and Temperature scores are norms)."""
    rows = []
    for result in results:
        spans, peak, rgb = _token_spans(result, clickable=False)
        label = result.scope + (f" → {result.target_str!r}" if result.scope == "semantic" else "")
        label += f" vs {result.contrast_str!r}" if result.contrast_str is not None else ""
        rows.append(
            f'<div class="tjs-compare-row" data-scope="{html.escape(result.scope)}" data-peak="{peak:.6g}">'
            f'<div class="tjs-compare-label"><b>{html.escape(label)}</b> · {html.escape(result.score_kind)} scores '
            f'· colour {_scale_html(rgb, peak)}</div><div class="tjs-tokens">{spans}</div></div>'
        )
    position = results[0].position if results else 0
    note = (f'<div class="tjs-legend">Influence on the prediction at position {position}. Each row is one scope in '
            "its own colour, from 0 (white) to that scope's largest score (full colour): rows are not on one "
            "scale. Hover a token for its score.</div>")
    return f'<div class="tjs-compare">{"".join(rows)}{note}</div>'


def _colour_top(grid: Any, skip_first_column: bool) -> tuple[float, float]:
    """``(top, peak)``: where a heatmap's colour saturates and its largest finite cell.

    ``top`` comes from the cells outside the first column when ``skip_first_column`` (the
    first token, an attention sink, has cells far above the rest and would wash them all to
    white), as the 99th percentile of those cells when there are at least 100 of them (a few
    extreme cells, such as the final residual at the explained position, would do the same).
    """
    import torch

    values = grid.detach().double()
    part = values[:, 1:] if skip_first_column and values.shape[1] > 1 else values
    finite = part[torch.isfinite(part)]
    everything = values[torch.isfinite(values)]
    peak = float(everything.max()) if everything.numel() else 0.0
    if not finite.numel():
        return peak, peak
    top = float(torch.quantile(finite, 0.99)) if finite.numel() >= 100 else float(finite.max())
    return (top if top > 0 else float(finite.max()) or peak), peak


def heatmap_table(grid: Any, rows: list[str], cols: list[str], color: str, top: float,
                  marked: Optional[int] = None) -> str:
    """A heatmap as a plain HTML table (no script: it shows as soon as it is in the page): cells
    coloured from 0 (white) to ``top`` (full colour, and above), non-finite cells grey, every
    cell's value in its tooltip; column labels vertical, in full."""
    r, g, b = _rgb(color)
    head = "".join(f'<th class="col{" marked" if j == marked else ""}" title="{html.escape(c)}">'
                   f"<span>{html.escape(c)}</span></th>" for j, c in enumerate(cols))
    body = []
    for label, values in zip(rows, grid.detach().double().tolist()):
        cells = []
        for col, v in zip(cols, values):
            tip = html.escape(f"{label}, {col}: {v:.4g}")
            if v != v or v in (float("inf"), float("-inf")):
                cells.append(f'<td title="{tip}" style="background:#b0b0b0"></td>')
                continue
            alpha = max(0.0, min(1.0, v / top)) if top > 0 else 0.0
            cells.append(f'<td title="{tip}" style="background:rgba({r},{g},{b},{alpha:.3f})"></td>')
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    return f'<table class="tjs-hm"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def internals_html(result: ScopeResult, normalization: str = "scaled") -> str:
    """The result's internal maps as the page shows them, sized to their content: layer ×
    position (the residual stream entering each block) and layer × head (all positions
    combined), each with its colour scale stated. The layer × position scale leaves out the
    first token (position 0), whose cells are drawn at full colour."""
    from ..views.html import NORMALIZATION_TEXT

    color = SCOPE_COLORS.get(result.scope, "#444444")
    norm_text = NORMALIZATION_TEXT[normalization]
    resid = result.internal("layer", normalization)
    n_layers = resid.shape[0] - 1
    top, peak = _colour_top(resid, skip_first_column=True)
    cols = [f"{i}:{_visible(t)}" for i, t in enumerate(result.str_tokens)]
    rgb = _rgb(color)
    sink = "" if len(cols) < 2 else ("; the first token (position 0, usually an attention sink whose cells dwarf the "
                                     "rest) is left out of the scale and drawn at full colour")
    parts = [
        f"<h4>Layer × position: the residual stream entering each block, {html.escape(norm_text)}</h4>",
        f'<div class="tjs-legend" data-top="{top:.6g}">colour {_scale_html(rgb, top)} (saturates at '
        f"{'the 99th percentile of' if resid[:, 1:].numel() >= 100 else 'the largest of'} the cells{sink}; "
        f"largest cell {peak:.4g}; hover a cell for its value; the explained position is highlighted)</div>",
        '<div class="tjs-hm-wrap">' + heatmap_table(resid, [f"L{i}" for i in range(n_layers)] + ["final"], cols,
                                                    color, top, result.position) + "</div>",
    ]
    heads = result.internal("head", normalization)
    per_head = result.aggregate(heads)
    top_h, peak_h = _colour_top(per_head, skip_first_column=False)
    head_cols = [f"H{h}" for h in range(per_head.shape[1])]
    parts += [
        f"<h4>Layer × head: all positions combined, {html.escape(norm_text)}</h4>",
        f'<div class="tjs-legend" data-top="{top_h:.6g}">colour {_scale_html(rgb, top_h)} (saturates at '
        f"{'the 99th percentile of' if per_head.numel() >= 100 else 'the largest of'} the cells; largest cell "
        f"{peak_h:.4g}; hover a cell for its value)</div>",
        '<div class="tjs-hm-wrap">' + heatmap_table(per_head, [f"L{i}" for i in range(n_layers)], head_cols,
                                                    color, top_h) + "</div>",
        '<div class="tjs-legend">Per-token views by site (attention, MLP) and by head: in the HTML file of '
        "“Files for this view”.</div>",
    ]
    return f'<div class="tjs-internals" data-scope="{html.escape(result.scope)}">{"".join(parts)}</div>'


def summary_html(result: ScopeResult) -> str:
    """The explained position, the top prediction and its probability (and the target's)."""
    r = result
    text = (f"<b>{html.escape(r.scope)}</b> scope · position {r.position} "
            f"({html.escape(repr(r.str_tokens[r.position]))}) → top prediction "
            f'<b class="tjs-pred">{html.escape(repr(r.predicted_str))}</b> '
            f'p=<span class="tjs-prob">{r.predicted_prob:.3f}</span>')
    if r.scope == "semantic":
        text += f" · target <b>{html.escape(repr(r.target_str))}</b> p={r.target_prob:.3f}"
        if r.contrast_str is not None:
            text += f" vs <b>{html.escape(repr(r.contrast_str))}</b> p={r.contrast_prob:.3f}"
    return f'<div class="tjs-msg tjs-info" data-position="{r.position}">{text} · click a token to explain it</div>'


def message_html(text: str, error: bool = False, run: Optional[int] = None) -> str:
    """A message line (errors in red); ``text`` is plain text; ``run`` counts a session's results."""
    kind = "tjs-error" if error else "tjs-info"
    counter = "" if run is None else f' data-run="{int(run)}"'
    return f'<div class="tjs-msg {kind}" role="{"alert" if error else "status"}"{counter}>{html.escape(text)}</div>'


def frame_html(view: ScopeView, height: int = 420) -> str:
    """A library view (CircuitsVis inlined, no CDN) in a sandboxed iframe: its scripts run in
    the frame only, with no access to the app's page."""
    return (f'<iframe class="tjs-frame" sandbox="allow-scripts" title="{html.escape(view.title)}" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #ddd;resize:vertical" '
            f'srcdoc="{html.escape(view.to_html(), quote=True)}"></iframe>')


def table_rows(rows: list[Any], columns: int) -> list[list[Any]]:
    """Rows for a gr.Dataframe (an empty table keeps its column count)."""
    return rows if rows else [[""] * columns]


def none_if_blank(value: Optional[str]) -> Optional[str]:
    """A dropdown's free text: '' and None mean "not given"; anything else is kept verbatim
    (a leading space is part of a token such as ' Paris')."""
    return None if value is None or value == "" else value
