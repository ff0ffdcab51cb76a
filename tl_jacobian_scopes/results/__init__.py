"""Result types returned by the scopes, and ``load`` for any file they save."""

from .batch import ScopeBatch
from .files import load, register_kind
from .generation import GenerationResult
from .scope_matrix import ScopeMatrix
from .scope_result import CellScore, HeadScore, ScopeResult, TokenScore

# What tjs.load reads. Files saved before the header existed are recognised by their keys.
register_kind("ScopeResult", ScopeResult.from_dict, legacy=lambda d: "scores" in d and "str_tokens" in d)
register_kind("ScopeMatrix", ScopeMatrix.from_dict, old_kinds=("scope_matrix",))
register_kind("ScopeBatch", ScopeBatch.from_dict)
register_kind("GenerationResult", GenerationResult.from_dict, old_kinds=("generation",))

__all__ = [
    "CellScore",
    "GenerationResult",
    "HeadScore",
    "ScopeBatch",
    "ScopeMatrix",
    "ScopeResult",
    "TokenScore",
    "load",
    "register_kind",
]
