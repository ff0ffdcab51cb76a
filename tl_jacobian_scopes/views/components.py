"""The parts every view is built from: safe script data, CircuitsVis elements, escaped text and
heatmaps. Public, so that the result types, the time-series views, patching and the app build
their sections from one kit (see :mod:`tl_jacobian_scopes.views.html` for why everything that
reaches a page is escaped)."""

from __future__ import annotations

import functools
import html
import json
import math
import re
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..errors import OptionError


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


def circuitsvis_element(element: str, **props: Any) -> str:
    """A div and the call that renders a CircuitsVis element into it once the bundle is there."""
    div = _mount_id()
    props = {k: v for k, v in props.items() if v is not None}
    if "tokens" in props:
        props["tokens"] = _token_html(props["tokens"])
    return (
        f'<div id="{div}" class="tjs-cv" data-element="{html.escape(element)}"></div>\n'
        f"<script>tjsCV({script_json(div)}, {script_json(element)}, {script_json(props)});</script>"
    )


def escape(value: Any) -> str:
    """Any value as escaped HTML text (safe in element content and quoted attributes)."""
    return html.escape(str(value))


#: A UTF-16 surrogate on its own (e.g. ``"\\ud800"`` read from a JSON file): not a character, so it
#: cannot be encoded as UTF-8, and one in a page made saving it (and a notebook displaying it) fail.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (what a browser shows for one)."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


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


def heatmap(
    grid: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], color: str, caption: str,
    marked_col: Optional[int] = None,
) -> str:
    """A heatmap table (rows x columns, one colour scale) that the page draws from packed data;
    labels are set as text, each column's in full (vertical) and as its tooltip.

    Raises:
        OptionError: ``color`` is not ``"#rrggbb"`` (the page reads it as hex: another colour
            would draw every cell blank).
    """
    if not isinstance(color, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        raise OptionError(f"heatmap() color must be '#rrggbb' (e.g. '#8a2be2'), got {color!r}.")
    spec, scale_text = _heatmap_spec(grid, color)
    marked = marked_col if isinstance(marked_col, int) and not isinstance(marked_col, bool) else None
    spec.update(rows=list(row_labels), cols=list(col_labels), marked=marked)
    div = _mount_id()
    return _heatmap_figure(div, caption, scale_text) + f"<script>tjsHeatmap({script_json(div)}, {script_json(spec)});</script>"


# The private names the package used before these were public (kept for one release).
_cv = circuitsvis_element
_esc = escape
_heatmap = heatmap
