"""Views: CircuitsVis pages that work offline, and static matplotlib figures.

The public kit a view is built from (:mod:`.components`: :func:`escape`,
:func:`circuitsvis_element`, :func:`heatmap`, :func:`script_json`; :func:`figure` for a static
figure; :data:`SCOPE_COLORS`) is what the result types, the time series and patching use too.
"""

from .colors import NORMALIZATION_TEXT, SCOPE_COLORS, scope_color
from .components import circuitsvis_element, escape, heatmap, script_json
from .html import compare, save_html, show
from .page import ScopeView, init_notebook
from .static import TEXT_STYLE, figure, plot, save_png

__all__ = [
    "NORMALIZATION_TEXT",
    "SCOPE_COLORS",
    "ScopeView",
    "TEXT_STYLE",
    "circuitsvis_element",
    "compare",
    "escape",
    "figure",
    "heatmap",
    "init_notebook",
    "plot",
    "save_html",
    "save_png",
    "scope_color",
    "script_json",
    "show",
]
