"""Views: CircuitsVis pages that work offline, and static matplotlib figures."""

from .html import ScopeView, compare, init_notebook, save_html, show
from .static import plot, save_png

__all__ = [
    "ScopeView",
    "compare",
    "init_notebook",
    "plot",
    "save_html",
    "save_png",
    "show",
]
