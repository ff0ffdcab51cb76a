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

import functools
import html
import json
import math
import reprlib
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

if TYPE_CHECKING:
    from ..results.scope_matrix import ScopeMatrix

import torch
from torch import Tensor

from ..errors import MissingPackageError, OptionError, ScopeError
from ..results.scope_result import ScopeResult, check_normalization
from ..results.files import write_output

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
    if isinstance(value, Tensor):
        return _pack(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _pack(torch.as_tensor(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return _round(value)
    return value


#: Packed arrays hold integers of 1/LEVELS of the array's largest magnitude.
LEVELS = 9999


def _round(value: float) -> float:
    """4 significant digits (what a page shows; NaN and infinities kept)."""
    return float(f"{value:.4g}") if math.isfinite(value) else value


def _pack(values: Tensor) -> dict[str, Any]:
    """A numeric array as ``{"$tjs": [step, shape, data]}``, decoded by the page's loader.

    ``data`` lists ``round(value / step)`` in row-major order, ``step`` being 1/9999 of the
    largest finite magnitude, and writes a run of ``k > 1`` zeros as ``[k]`` (scores are
    zero after the explained position). NaN and infinities pass through as themselves.
    """
    x = values.detach().double().cpu()  # float64: a step below float32's range (tiny scores) would be 0
    finite = x[torch.isfinite(x)]
    peak = float(finite.abs().max()) if finite.numel() else 0.0
    step = float(f"{peak / LEVELS:.6g}") if peak > 0 else 1.0
    data: list[Any] = []
    zeros = 0
    for v in torch.round(x / step).flatten().tolist():
        if v == 0:
            zeros += 1
            continue
        if zeros:
            data.append(0 if zeros == 1 else [zeros])
            zeros = 0
        data.append(int(v) if math.isfinite(v) else v)
    if zeros:
        data.append(0 if zeros == 1 else [zeros])
    return {"$tjs": [step, list(x.shape), data]}


def _token_html(tokens: Sequence[str]) -> list[str]:
    """Tokens as CircuitsVis must receive them: it inserts each one as HTML (innerHTML)."""
    return [html.escape(t, quote=False) for t in tokens]


def _mount_id() -> str:
    return f"tjs-cv-{uuid.uuid4().hex[:12]}"


_MOUNT_ID = re.compile(r'id="(tjs-cv-[0-9a-f]{12})"')


def _fresh_mount_ids(sections: Sequence[str]) -> list[str]:
    """``sections`` with new element ids: a view displayed twice in one page (``display(v)``
    in two cells) must not mount into the first display's elements, leaving the second blank."""
    old = dict.fromkeys(m for s in sections for m in _MOUNT_ID.findall(s))
    if not old:
        return list(sections)
    new = {o: _mount_id() for o in old}
    pattern = re.compile("|".join(map(re.escape, new)))
    return [pattern.sub(lambda m: new[m.group(0)], s) for s in sections]


def _cv(element: str, **props: Any) -> str:
    """A div and the call that renders a CircuitsVis element into it once the bundle is there."""
    div = _mount_id()
    props = {k: v for k, v in props.items() if v is not None}
    if "tokens" in props:
        props["tokens"] = _token_html(props["tokens"])
    return (
        f'<div id="{div}" class="tjs-cv" data-element="{html.escape(element)}"></div>\n'
        f"<script>tjsCV({script_json(div)}, {script_json(element)}, {script_json(props)});</script>"
    )


def _esc(value: Any) -> str:
    """Any value as escaped HTML text (safe in element content and quoted attributes)."""
    return html.escape(str(value))


def _heatmap_spec(grid: Tensor, color: str) -> tuple[dict[str, Any], str]:
    """The colour scale of a heatmap (``top``) and its caption text.

    The scale tops out at the 99th percentile of the cells (stated in the caption), so that a
    handful of extreme cells (e.g. the final residual at the explained position) does not
    wash out the rest; cells above it are drawn at full colour. The scale comes from the finite
    cells: NaN and infinite cells are drawn grey and counted in the caption (one NaN used to
    make the whole scale NaN, and the heatmap blank).
    """
    values = grid.detach().float().flatten()
    finite = values[torch.isfinite(values)]
    peak = float(finite.max()) if finite.numel() else 0.0
    top = peak
    if finite.numel() >= 100:
        top = float(torch.quantile(finite, 0.99))
        top = top if top > 0 else peak
    scale_text = f"max {peak:.4g}" + (f"; colour saturates at the 99th percentile, {top:.4g}" if top < peak else "")
    n_bad = values.numel() - finite.numel()
    if n_bad:
        scale_text += f"; {n_bad} non-finite cell{'s' if n_bad > 1 else ''} (NaN or infinite) in grey"
    return {"values": grid, "color": color, "top": top}, scale_text


def _heatmap_figure(div: str, caption: str, scale_text: str) -> str:
    return (f'<figure class="tjs-heatmap"><figcaption>{html.escape(caption)} ({html.escape(scale_text)})'
            f'</figcaption><div id="{div}" class="tjs-hm"></div></figure>')


def _heatmap(
    grid: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], color: str, caption: str,
    marked_col: Optional[int] = None,
) -> str:
    """A heatmap table (rows x columns, one colour scale) that the page draws from packed data;
    labels are set as text, each column's in full (vertical) and as its tooltip."""
    spec, scale_text = _heatmap_spec(grid, color)
    marked = marked_col if isinstance(marked_col, int) and not isinstance(marked_col, bool) else None
    spec.update(rows=list(row_labels), cols=list(col_labels), marked=marked)
    div = _mount_id()
    return _heatmap_figure(div, caption, scale_text) + f"<script>tjsHeatmap({script_json(div)}, {script_json(spec)});</script>"


def _prob(p: Optional[float]) -> str:
    return f"{p:.3f}" if isinstance(p, (int, float)) else _esc(p)


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
    color = SCOPE_COLORS.get(r.scope, "#444444")
    sections = [_header(r)]
    if "tokens" in parts:
        sections += [
            f"<h4>Tokens coloured by {_esc(r.scope)} score (0 … {float(r.scores.max()):.4g}); "
            f"explained position {_esc(r.position)}</h4>",
            _cv("ColoredTokens", tokens=r.str_tokens, values=r.scores, minValue=0.0,
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
            _cv("TextNeuronActivations", tokens=r.str_tokens, activations=sites,
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
            _cv("TextNeuronActivations", tokens=r.str_tokens, activations=heads.permute(2, 0, 1),
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
        _cv("ColoredTokensMulti", tokens=tokens, values=values, labels=labels),
    ]


STYLE = """
<style>
.tjs-view{font-family:system-ui,sans-serif;font-size:13px;max-width:1200px}
.tjs-header{padding:6px 10px;margin:8px 0;background:#f7f7f7}
.tjs-view h4{margin:14px 0 4px 0;font-weight:600}
.tjs-heatmap{margin:10px 0;overflow-x:auto}
.tjs-heatmap table{border-collapse:collapse;font-size:10px}
.tjs-heatmap td{width:14px;height:12px;border:1px solid #fff;padding:0}
.tjs-heatmap th{font-weight:normal;padding:0 3px;text-align:right;white-space:nowrap}
.tjs-heatmap th.col{vertical-align:bottom;padding:2px 0}
.tjs-heatmap th.col span{display:inline-block;writing-mode:vertical-rl;transform:rotate(180deg);white-space:pre}
.tjs-heatmap th.marked{background:#ffe9a8}
.tjs-params{color:#555;font-size:11px}
.tjs-cv[data-element="ColoredTokensMulti"]>div{padding-bottom:4px!important}
.tjs-cv .colored-tokens{padding-bottom:2px!important}
.tjs-missing{color:#a33}
</style>
"""

#: Renders every view of a page; defined by each display (a few hundred bytes), so a view
#: shown before the bundle's script has run waits for ``window.CircuitsVis`` (polling for
#: 20 s, then it says what to do). Only ``textContent``/attributes take data: never HTML,
#: except the tokens CircuitsVis itself inserts, which Python has escaped.
LOADER = r"""<script>
(function(w){
function decode(p){var s=p[0],shape=p[1],flat=[];p[2].forEach(function(d){
 if(Array.isArray(d)){for(var i=0;i<d[0];i++)flat.push(0);}else flat.push(d===0?0:+(d*s).toPrecision(4));});
 function build(k,off){if(k===shape.length)return flat[off];var n=1,out=[];
  for(var j=k+1;j<shape.length;j++)n*=shape[j];for(var i=0;i<shape[k];i++)out.push(build(k+1,off+i*n));return out;}
 return build(0,0);}
function unpack(v){if(Array.isArray(v))return v.map(unpack);
 if(v&&typeof v==="object"){if(Object.prototype.hasOwnProperty.call(v,"$tjs"))return decode(v["$tjs"]);
  var o={};for(var k in v)o[k]=unpack(v[k]);return o;}return v;}
w.tjsUnpack=unpack;
w.tjsCV=function(id,element,props){var tries=0;props=unpack(props);(function attempt(){
 var el=document.getElementById(id);if(!el)return;
 if(w.CircuitsVis){w.CircuitsVis.render(id,w.CircuitsVis[element],props);return;}
 if(++tries<200){setTimeout(attempt,100);return;}
 el.className+=" tjs-missing";el.textContent="CircuitsVis's script is not in this page (it travels with the first "
  +"Jacobian Scopes view of a kernel session, whose output was cleared or not saved): run "
  +"tl_jacobian_scopes.init_notebook() in a cell above, then re-run this one.";})();};
w.tjsHeatmap=function(id,spec){var el=document.getElementById(id);if(!el)return;spec=unpack(spec);
 var c=spec.color,r=parseInt(c.slice(1,3),16),g=parseInt(c.slice(3,5),16),b=parseInt(c.slice(5,7),16);
 var t=document.createElement("table"),head=t.createTHead().insertRow(),body=t.createTBody();
 head.appendChild(document.createElement("th"));
 spec.cols.forEach(function(label,j){var th=document.createElement("th"),span=document.createElement("span");
  th.className="col"+(j===spec.marked?" marked":"");span.textContent=label;th.title=label;th.appendChild(span);
  head.appendChild(th);});
 spec.rows.forEach(function(label,i){var tr=body.insertRow(),th=document.createElement("th");
  th.textContent=label;tr.appendChild(th);spec.values[i].forEach(function(v,j){var td=tr.insertCell();
   if(!isFinite(v)){td.style.background="#b0b0b0";td.title=label+", "+spec.cols[j]+": "+(v!==v?"nan":v>0?"inf":"-inf");return;}
   var a=spec.top>0?Math.max(0,Math.min(1,v/spec.top)):0;td.style.background="rgba("+r+","+g+","+b+","+a.toFixed(3)+")";
   td.title=label+", "+spec.cols[j]+": "+v;});});
 el.appendChild(t);};
function unescapeHTML(t){return t.replace(/&lt;/g,"<").replace(/&gt;/g,">").replace(/&amp;/g,"&");}
w.tjsMatrix=function(heatmapId,tokensId,spec){spec=unpack(spec);
 w.tjsHeatmap(heatmapId,{rows:spec.rows,values:spec.values,color:spec.color,top:spec.top,marked:null,
  cols:spec.tokens.map(function(t,i){return i+":"+unescapeHTML(t);})});
 var perToken=spec.tokens.map(function(_,j){return spec.values.map(function(row){
  var peak=Math.max.apply(null,row.filter(isFinite));return peak>0&&isFinite(row[j])?+(row[j]/peak).toPrecision(4):0;});});
 w.tjsCV(tokensId,"ColoredTokensMulti",{tokens:spec.tokens,values:perToken,labels:spec.rows});};
})(window);
</script>
"""

#: Whether this Python process has already sent the bundle to its notebook page, and the
#: (cell id, execute request id) of the output that carries it, where the front end says.
_notebook: dict[str, Any] = {"bundle_sent": False, "carrier": None}


def _current_cell() -> Optional[tuple[str, str]]:
    """``(cell id, execute request id)`` of the notebook cell running now, or None.

    JupyterLab, Notebook 7 and VS Code send the cell's id with each execution; IPython is
    looked up only if already imported (a kernel has it).
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    get_parent = getattr(getattr(shell, "kernel", None), "get_parent", None)
    if get_parent is None:
        return None
    try:
        parent = get_parent("shell")
    except Exception:  # an older or foreign kernel: no cell ids, the documented init_notebook() applies
        return None
    cell = (parent.get("metadata") or {}).get("cellId") if isinstance(parent, dict) else None
    request = (parent.get("header") or {}).get("msg_id") if isinstance(parent, dict) else None
    return (str(cell), str(request)) if cell and request else None


def _bundle_script() -> str:
    return f"<script>{circuitsvis_bundle()}</script>\n"


def _separate_page_per_output() -> bool:
    """Colab shows each output in its own frame, where an earlier output's script is not visible."""
    return "google.colab" in sys.modules


def page(sections: Sequence[str], title: str = "Jacobian Scopes", bundle: bool = True) -> str:
    """One HTML fragment: style, the CircuitsVis bundle (when ``bundle``), the loader, then the sections."""
    return (
        f'<div class="tjs-view">{STYLE}{_bundle_script() if bundle else ""}{LOADER}'
        + "\n".join(sections)
        + "</div>"
    )


def init_notebook() -> None:
    """Load the views' JavaScript (CircuitsVis, 1.3 MB, offline) into this notebook page now.

    The first view a Python process displays does this by itself, and later views reuse it,
    so a notebook holds one copy (re-running that cell sends it again where the front end
    sends cell ids). Call this after clearing that first output (the copy goes with the
    output), or to load it before any view.

    Examples:
        >>> import tl_jacobian_scopes as tjs
        >>> tjs.init_notebook()  # in a notebook cell (elsewhere IPython prints the raw bundle)  # doctest: +SKIP

    Raises:
        MissingPackageError: IPython is not installed (no notebook to display into).
    """
    try:
        from IPython.display import display
    except ImportError as exc:
        raise MissingPackageError("init_notebook() displays into a Jupyter notebook: pip install ipykernel") from exc
    display({"text/html": f'<div class="tjs-init">{_bundle_script()}{LOADER}</div>',
             "text/plain": "Jacobian Scopes views: CircuitsVis loaded"}, raw=True)  # type: ignore[no-untyped-call]
    _notebook.update(bundle_sent=True, carrier=_current_cell())


def notebook_html(sections: Sequence[str], title: str = "Jacobian Scopes") -> str:
    """The HTML a notebook displays: with the bundle only the first time in this Python process."""
    here, carrier = _current_cell(), _notebook.get("carrier")
    # Re-running the cell whose output carries the bundle replaces that output: carry it again.
    rerun = here is not None and carrier is not None and here[0] == carrier[0] and here[1] != carrier[1]
    bundle = not _notebook["bundle_sent"] or rerun or _separate_page_per_output()
    if bundle:
        _notebook.update(bundle_sent=True, carrier=here)
    return page(sections, title, bundle=bundle)


class ScopeView:
    """A rendered view: displays itself in a notebook, and saves as one offline HTML file.

    Examples:
        >>> r = tjs.fisher_scope(model, "The capital of France is", internals=True)
        >>> view = r.show("tokens", "heads")
        >>> view  # a cell's last line: displays it  # doctest: +ELLIPSIS
        <...>
        >>> path = view.save("scope.html")
    """

    def __init__(self, sections: Sequence[str], title: str = "Jacobian Scopes", parts: Sequence[str] = ()):
        self.sections = list(sections)  # HTML fragments, already escaped by whoever built them
        self.title = str(title)  # plain text: escaped when the page is written
        self.parts = [str(p) for p in parts]  # what it shows, for the text summary

    def _repr_html_(self) -> str:
        return notebook_html(_fresh_mount_ids(self.sections), self.title)

    def __repr__(self) -> str:
        shows = ", ".join(self.parts) if self.parts else f"{len(self.sections)} sections"
        return (f"<ScopeView {self.title!r}: {shows}. Display it as a notebook cell's last line; "
                f"save one offline page with .save('view.html').>")

    def to_html(self) -> str:
        """A complete standalone HTML document (all JavaScript inlined, one copy of CircuitsVis)."""
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"</head><body>{page(self.sections, self.title)}</body></html>"
        )

    def save(self, path: Union[str, Path]) -> Path:
        """Write :meth:`to_html` to ``path``."""
        text = self.to_html()
        return write_output(path, lambda p: p.write_text(text, encoding="utf-8"))


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
    color = SCOPE_COLORS.get(matrix.scope, "#444444")
    rows = [f"{r.position}:{r.str_tokens[r.position]}→{r.target_str}" for r in matrix]
    header = (
        f'<div class="tjs-header" style="border-left:4px solid {color}"><b>{_esc(matrix.scope)}</b> scope '
        f"({_esc(matrix.score_kind)} scores) at {len(matrix)} positions · {_esc(first.model_name)}</div>"
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
