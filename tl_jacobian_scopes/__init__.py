"""Jacobian Scopes for TransformerLens: which input tokens drive a next-token prediction.

Examples:
    >>> import tl_jacobian_scopes as tjs
    >>> model = tjs.load_default_model()
    >>> r = tjs.semantic_scope(model, "The capital of France is", target=" Paris")
    >>> [t.token for t in r.top(3)]
    ['The', ' capital', ' France']
"""

# Private aliases: dir(tjs) and autocomplete list the package's names, not its imports.
import importlib as _importlib
import sys as _sys
import warnings as _warnings
from typing import Any as _Any

from .errors import (
    ArchitectureError,
    DataFileError,
    DeviceError,
    MissingHookError,
    MissingPackageError,
    ModelLoadError,
    NonFiniteError,
    OptionError,
    OutputMismatchError,
    PrecisionWarning,
    FolderLockedError,
    OutputPathError,
    PositionError,
    ProcessedWeightsError,
    ProcessedWeightsWarning,
    PromptError,
    ScopeError,
    ScopeMemoryError,
    StaleRecordsError,
    TargetError,
    TargetWarning,
    TokenizationWarning,
    UnknownScopeError,
)
from .models import DEFAULT_MODEL_NAME, load_default_model, load_model
from .results import load
from .scopes import SCOPES, Method, Scope, fisher_scope, jacobian_scope, semantic_scope, temperature_scope
from .views import ScopeView, compare, init_notebook, save_html
from .scopes.generation import explain_generation
from .scopes.output_check import skip_output_check
# The submodules: importing evaluation registers the gradient baselines (tjs.jacobian_scope(..., "gxi")).
from . import data, evaluation, patching, results, sweep
from .sweep import run_sweep

__version__ = "0.1.0"

# Names that lived at the top level before the public surface shrank (issue 23): each resolves, with a
# DeprecationWarning, to the same object in its submodule for one release.
_MOVED = {
    **dict.fromkeys(("CellScore", "GenerationResult", "HeadScore", "ScopeBatch", "ScopeMatrix", "ScopeResult",
                     "TokenScore"), "results"),
    **dict.fromkeys(("ablate_positions", "gradient_x_input", "integrated_gradients", "leave_one_out",
                     "path_semantic_scope", "random_attribution"), "evaluation"),
    **dict.fromkeys(("PatchOutcome", "PatchingCell", "PatchingResult", "RawSensitivityWarning",
                     "attribution_patching_map", "movable_cells", "patch_activations", "patch_top",
                     "patching_map", "residual_patching_map", "spearman"), "patching"),
}


def __getattr__(name: str) -> _Any:
    submodule = _MOVED.get(name)
    if submodule is None:
        raise AttributeError(f"module 'tl_jacobian_scopes' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{submodule}"), name)
    # `from tl_jacobian_scopes import X` asks twice: importlib's hasattr() check of a package's
    # fromlist, then the import itself. Warn once per import: only the second ask, from the user's line.
    caller = _sys._getframe(1).f_code.co_filename
    if "importlib" in caller and "_bootstrap" in caller:
        return value
    _warnings.warn(f"tl_jacobian_scopes.{name} moved to tl_jacobian_scopes.{submodule}.{name} "
                  f"(tjs.{submodule}.{name}); the top-level name goes in the next release.",
                  DeprecationWarning, stacklevel=2)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))


__all__ = [
    # errors and warnings
    "ArchitectureError",
    "DataFileError",
    "DeviceError",
    "FolderLockedError",
    "MissingHookError",
    "MissingPackageError",
    "ModelLoadError",
    "NonFiniteError",
    "OptionError",
    "OutputMismatchError",
    "OutputPathError",
    "PositionError",
    "PrecisionWarning",
    "ProcessedWeightsError",
    "ProcessedWeightsWarning",
    "PromptError",
    "ScopeError",
    "ScopeMemoryError",
    "StaleRecordsError",
    "TargetError",
    "TargetWarning",
    "TokenizationWarning",
    "UnknownScopeError",
    # models
    "DEFAULT_MODEL_NAME",
    "load_default_model",
    "load_model",
    # the scopes
    "Method",
    "SCOPES",
    "Scope",
    "explain_generation",
    "fisher_scope",
    "jacobian_scope",
    "semantic_scope",
    "skip_output_check",
    "temperature_scope",
    # results and views
    "ScopeView",
    "compare",
    "init_notebook",
    "load",
    "save_html",
    # sweeps
    "run_sweep",
    # submodules
    "data",
    "evaluation",
    "patching",
    "results",
    "sweep",
]
