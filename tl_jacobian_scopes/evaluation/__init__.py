"""Evaluation: baselines, interventions as hooks, the AOPC faithfulness protocol, patching."""

from .aopc import FRACTIONS, aopc, deletion_deltas, loo_percentile
from .baselines import (
    gradient_x_input,
    integrated_gradients,
    leave_one_out,
    path_semantic_scope,
    random_attribution,
)
from .interventions import ablate_positions, patch_activations
from .patching import (
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
from .patching_result import PatchingCell, PatchingResult

__all__ = [
    "FRACTIONS",
    "PatchOutcome",
    "PatchingCell",
    "PatchingResult",
    "RANK_BY",
    "RawSensitivityWarning",
    "ablate_positions",
    "aopc",
    "attribution_patching_map",
    "deletion_deltas",
    "gradient_x_input",
    "integrated_gradients",
    "leave_one_out",
    "loo_percentile",
    "movable_cells",
    "patch_activations",
    "patch_top",
    "patching_map",
    "path_semantic_scope",
    "random_attribution",
    "residual_patching_map",
    "spearman",
]
