"""Exceptions raised by tl_jacobian_scopes.

Every error the library raises on bad input names what went wrong and how to fix it. All
of them derive from :class:`ScopeError` (itself a :class:`ValueError`), so
``except tjs.ScopeError`` catches any of them.
"""

from __future__ import annotations


class ScopeError(ValueError):
    """Base class of every error tl_jacobian_scopes raises on bad input or state."""


class PromptError(ScopeError):
    """The prompt is empty, malformed, or longer than the model's context."""


class TargetError(ScopeError):
    """The target (or contrast) is not a single token of the model's vocabulary."""


class PositionError(ScopeError):
    """The explained position (or an ablated / patched position) is outside the prompt."""


class OptionError(ScopeError):
    """An option has a value the method cannot use (rank, seed, batch_size, k, site, ...)."""


class UnknownScopeError(OptionError):
    """A scope or baseline name that does not exist."""


class MissingHookError(ScopeError):
    """The model lacks a hook point that the method reads or perturbs."""


class ProcessedWeightsError(ScopeError):
    """The model's weights were processed in a way that breaks this scope."""


class ArchitectureError(ScopeError):
    """The model's architecture (or TransformerLens's support for it) cannot give this scope:
    a final norm without a learned scale for Temperature, a post-unembedding transform that is
    not elementwise, or a TransformerLens failure inside the family's forward pass."""


class OutputMismatchError(ScopeError):
    """The library's next-token distribution differs from the model's own output (an output
    transform TransformerLens does not declare, or a bridge whose forward pass differs from the
    wrapped Hugging Face model's): the scopes would explain a function the model does not compute."""


class NonFiniteError(ScopeError):
    """NaN or infinity in the model's weights or activations: scores would be meaningless."""


class DeviceError(ScopeError):
    """The device asked for does not exist in this PyTorch build or on this machine."""


class ModelLoadError(ScopeError):
    """A model could not be loaded (a missing package, an unwritable cache, a bad backend)."""


class MissingPackageError(ModelLoadError, ImportError):
    """A package the model needs is not installed (also an ImportError)."""


class DataFileError(ScopeError):
    """A data or results file is missing, empty, malformed, or belongs to another run."""


class StaleRecordsError(DataFileError):
    """A records file (or a sweep's part file) holds records of another data file or of other
    settings: resuming would mix them with the new ones."""


class OutputPathError(ScopeError):
    """An output file cannot be written (checked before any computation), or the disk filled up."""


class FolderLockedError(OutputPathError):
    """Another sweep (another process) is writing to the same output folder."""


class ScopeMemoryError(ScopeError, MemoryError):
    """The scope would not fit in the memory available on the model's device."""


class ProcessedWeightsWarning(UserWarning):
    """The model's weights were processed in a way that changes (but does not break) a scope."""


class PrecisionWarning(UserWarning):
    """A prediction so confident (``1 - p_top`` below about 1e-5) that float32 Fisher scores lose
    digits: ``F`` is a difference of two nearly equal terms there (docs/method.md §2.3)."""


class TargetWarning(UserWarning):
    """A target (or contrast) given as text is far less likely than a near spelling of it
    (e.g. ``"Paris"`` where ``" Paris"`` is the prediction): probably the wrong token."""


class TokenizationWarning(UserWarning):
    """A text prompt does not survive tokenization unchanged, so its token ids may differ from
    the ids it was decoded from: pass token ids instead."""
