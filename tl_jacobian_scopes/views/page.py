"""Pages: the style and loader every view carries, the notebook's one copy of the CircuitsVis
bundle, and :class:`ScopeView`, the object a result's ``show()`` returns."""

from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import MissingPackageError
from ..results.files import write_output
from .components import _fresh_mount_ids, circuitsvis_bundle, _valid_text

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
        + _valid_text("\n".join(sections))  # a lone surrogate in a token cannot be written as UTF-8
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
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(_valid_text(self.title))}</title>"
            f"</head><body>{page(self.sections, self.title)}</body></html>"
        )

    def save(self, path: Union[str, Path]) -> Path:
        """Write :meth:`to_html` to ``path``."""
        text = self.to_html()
        return write_output(path, lambda p: p.write_text(text, encoding="utf-8"))
