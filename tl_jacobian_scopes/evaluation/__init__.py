"""Evaluation: baselines, interventions as hooks, the AOPC faithfulness protocol."""

from .aopc import FRACTIONS, aopc, deletion_deltas, loo_percentile
from .baselines import (
    gradient_x_input,
    integrated_gradients,
    leave_one_out,
    path_semantic_scope,
    random_attribution,
)
from .interventions import ablate_positions, patch_activations
from .patching import PatchOutcome, attribution_patching_map, patch_top, patching_map, residual_patching_map
