"""The scopes: declarations (what each method is), one driver (how every method runs), engine."""

from .api import SCOPES, Scope, fisher_scope, jacobian_scope, resolve_scope, semantic_scope, temperature_scope
from .declarations import Method

__all__ = [
    "Method",
    "SCOPES",
    "Scope",
    "fisher_scope",
    "jacobian_scope",
    "resolve_scope",
    "semantic_scope",
    "temperature_scope",
]
