"""Exceptions raised by tl_jacobian_scopes.

Every error names what went wrong and how to fix it. All of them derive from
:class:`ScopeError` (itself a :class:`ValueError`), so ``except ScopeError`` catches
any bad input to a scope.
"""

from __future__ import annotations


class ScopeError(ValueError):
    """Base class for bad inputs to a Jacobian scope."""


class PromptError(ScopeError):
    """The prompt is empty, malformed, or longer than the model's context."""


class TargetError(ScopeError):
    """The target (or contrast) is not a single token of the model's vocabulary."""


class PositionError(ScopeError):
    """The explained position is outside the prompt."""


class UnknownScopeError(ScopeError):
    """A scope name that does not exist."""


class MissingHookError(ScopeError):
    """The model lacks a hook point that the method reads or perturbs."""


class ProcessedWeightsError(ScopeError):
    """The model's weights were processed in a way that breaks this scope."""


class ScopeMemoryError(ScopeError, MemoryError):
    """The scope would not fit in the memory available on the model's device."""


class ProcessedWeightsWarning(UserWarning):
    """The model's weights were processed in a way that changes (but does not break) a scope."""
