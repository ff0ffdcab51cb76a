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


def test_head_attribution_patching_finds_the_heads_that_restore_the_answer():
    """Per head (hook_z at every position). Measured, Spearman of the estimate with real head
    patching: 0.99, 0.99, 0.94, 0.96; patching the estimate's top-3 heads restores 93%, 95%,
    86%, 140% of the logit difference (best single heads: L23H4 for the capitals, L23H3 for
    IOI). The raw scope head map ranks by sensitivity (early layers, ~0 correlation) and its
    top-3 heads restore ~0%. Bounds: Spearman > 0.85 and top-3 restore > 50% on every pair
    (a wrong sign, head index or position sum breaks them), and better than the raw map."""
    model = tjs.load_default_model(device="cpu")
    for clean, corrupt, answer, wrong in PAIRS:
        real = tjs.patching_map(model, clean, corrupt, answer, wrong, site="head")
        estimate = tjs.attribution_patching_map(model, clean, corrupt, answer, wrong, site="head")
        assert spearman(estimate, real) > 0.85, clean
        top3 = tjs.patch_top(model, clean, corrupt, estimate, k=3, answer=answer, wrong=wrong)
        assert top3.recovered > 0.5, (clean, top3)
        # its top head is the single head whose real patch restores the most
        assert top3.patched[0] == divmod(int(real.flatten().argmax()), real.shape[1]), clean
        raw = tjs.semantic_scope(model, clean, target=answer, contrast=wrong, internals=True)
        assert top3.recovered > tjs.patch_top(model, clean, corrupt, raw, k=3, site="head").recovered + 0.3
