"""Result types returned by the scopes."""

from .scope_result import ScopeResult, TokenScore
