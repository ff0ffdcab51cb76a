"""Activation patching: the causal maps a scope is compared with (``tjs.patching``).

The calls live in :mod:`tl_jacobian_scopes.evaluation` (patching is one way of evaluating a
scope); this is their short public home: ``tjs.patching.patching_map(...)``.
"""

from ..evaluation.interventions import patch_activations
from ..evaluation.patching import (
    RANK_BY,
    PatchOutcome,
    RawSensitivityWarning,
    attribution_patching_map,
    movable_cells,
    patch_top,
    patching_map,
    residual_patching_map,
    spearman,
)
from ..evaluation.patching_result import PatchingCell, PatchingResult

__all__ = [
    "RANK_BY",
    "PatchOutcome",
    "PatchingCell",
    "PatchingResult",
    "RawSensitivityWarning",
    "attribution_patching_map",
    "movable_cells",
    "patch_activations",
    "patch_top",
    "patching_map",
    "residual_patching_map",
    "spearman",
]
