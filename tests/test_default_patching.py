"""Contrastive Semantic Scope vs real activation patching on the embedded model."""

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.evaluation.patching import residual_patching_map, spearman

PAIRS = [
    ("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of", " Paris", " Rome"),
    ("The sun rises in the", "The sun sets in the", " east", " west"),
]


def test_scope_layer_map_correlates_with_residual_patching():
    """Bound: the scope measures the sensitivity of the logit difference to each residual
    cell, while patching measures the effect of the particular clean-to-corrupted change, so
    only a modest positive rank correlation is expected. Measured (Spearman, raw map on the
    clean prompt): 0.28, 0.42, 0.15, 0.39 (mean 0.31). The test asserts every pair > 0.1 and
    a mean > 0.25: a scope unrelated to the circuit (correlation ~0) fails it."""
    model = tjs.load_default_model(device="cpu")
    values, estimates = [], []
    for clean, corrupt, answer, wrong in PAIRS:
        effect = residual_patching_map(model, clean, corrupt, answer, wrong)
        result = tjs.semantic_scope(model, clean, target=answer, contrast=wrong, internals=True)
        values.append(spearman(result.internal("layer")[:-1], effect))
        estimates.append(spearman(tjs.attribution_patching_map(model, clean, corrupt, answer, wrong), effect))
    assert min(values) > 0.1, values
    assert sum(values) / len(values) > 0.25, values
    # The same probe's gradient dotted with the clean-corrupted difference (attribution patching)
    # predicts patching far better. Measured: 0.94, 0.96, 0.70, 0.77 (mean 0.84); the bound
    # (each > 0.6, mean > 0.75, each above the sensitivity map) fails for a sign or layer-offset bug.
    assert min(estimates) > 0.6 and sum(estimates) / len(estimates) > 0.75, estimates
    assert all(e > v for e, v in zip(estimates, values)), (estimates, values)
