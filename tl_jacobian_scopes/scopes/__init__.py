"""The Jacobian scopes: Semantic, Temperature and Fisher."""

from .api import SCOPES, fisher_scope, jacobian_scope, resolve_scope, semantic_scope, temperature_scope
