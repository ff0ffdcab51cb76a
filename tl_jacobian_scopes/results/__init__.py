"""Result types returned by the scopes."""

from .scope_matrix import ScopeMatrix
from .scope_result import CellScore, HeadScore, ScopeResult, TokenScore
