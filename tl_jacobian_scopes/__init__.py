"""Jacobian Scopes for TransformerLens: which input tokens drive a next-token prediction.

Examples:
    >>> import tl_jacobian_scopes as tjs
    >>> model = tjs.load_default_model()
    >>> r = tjs.semantic_scope(model, "The capital of France is", target=" Paris")
    >>> [t.token for t in r.top(3)]
    ['The', ' capital', ' France']
"""

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
from .results import CellScore, HeadScore, ScopeBatch, ScopeMatrix, ScopeResult, TokenScore, load
from .scopes import SCOPES, Method, Scope, fisher_scope, jacobian_scope, semantic_scope, temperature_scope
from .views import ScopeView, compare, init_notebook, save_html
from .results.generation import GenerationResult
from .scopes.generation import explain_generation
from .evaluation import (
    ablate_positions,
    attribution_patching_map,
    gradient_x_input,
    integrated_gradients,
    leave_one_out,
    movable_cells,
    patch_activations,
    patch_top,
    patching_map,
    path_semantic_scope,
    random_attribution,
    residual_patching_map,
    spearman,
    PatchOutcome,
)
from .evaluation import PatchingCell, PatchingResult, RawSensitivityWarning
from .scopes.output_check import skip_output_check
from . import data, sweep
from .sweep import run_sweep

__version__ = "0.1.0"

__all__ = [
    "ArchitectureError",
    "CellScore",
    "HeadScore",
    "DEFAULT_MODEL_NAME",
    "DataFileError",
    "DeviceError",
    "GenerationResult",
    "Method",
    "ModelLoadError",
    "NonFiniteError",
    "OptionError",
    "OutputMismatchError",
    "PrecisionWarning",
    "FolderLockedError",
    "OutputPathError",
    "Scope",
    "MissingHookError",
    "MissingPackageError",
    "PositionError",
    "ProcessedWeightsError",
    "ProcessedWeightsWarning",
    "PromptError",
    "SCOPES",
    "ScopeError",
    "ScopeMemoryError",
    "ScopeBatch",
    "ScopeMatrix",
    "ScopeResult",
    "ScopeView",
    "StaleRecordsError",
    "TargetError",
    "TargetWarning",
    "TokenizationWarning",
    "TokenScore",
    "UnknownScopeError",
    "ablate_positions",
    "attribution_patching_map",
    "compare",
    "explain_generation",
    "gradient_x_input",
    "init_notebook",
    "integrated_gradients",
    "leave_one_out",
    "load",
    "movable_cells",
    "PatchOutcome",
    "PatchingCell",
    "PatchingResult",
    "RawSensitivityWarning",
    "patch_activations",
    "patch_top",
    "patching_map",
    "path_semantic_scope",
    "random_attribution",
    "run_sweep",
    "residual_patching_map",
    "spearman",
    "fisher_scope",
    "jacobian_scope",
    "load_default_model",
    "load_model",
    "save_html",
    "semantic_scope",
    "skip_output_check",
    "sweep",
    "temperature_scope",
]
