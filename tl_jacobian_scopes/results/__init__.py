"""Result types returned by the scopes."""

from .scope_matrix import ScopeMatrix
from .scope_result import CellScore, HeadScore, ScopeResult, TokenScore

__all__ = [
    "CellScore",
    "HeadScore",
    "ScopeMatrix",
    "ScopeResult",
    "TokenScore",
]
