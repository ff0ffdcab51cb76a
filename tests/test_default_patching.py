"""Contrastive Semantic Scope vs real activation patching on the embedded model.

Rank correlations use average ranks for ties (``spearman``) and are reported over all
``[n_layers, pos]`` cells and over the cells patching can move (``movable_cells``: from the
first differing token on; before it both runs hold the same activations and patching is
exactly 0). Measured values and their environment are in README.md ("Faithfulness and
patching"); they agree to 3 decimals on TransformerLens 3.9 and 4.3.
"""


import pytest
import torch

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.evaluation.patching import movable_cells, residual_patching_map, spearman

PAIRS = [
    ("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of", " Paris", " Rome"),
    ("The sun rises in the", "The sun sets in the", " east", " west"),
]


@pytest.fixture(scope="module")
def layer_maps(default_model):
    rows = []
    for clean, corrupt, answer, wrong in PAIRS:
        effect = residual_patching_map(default_model, clean, corrupt, answer, wrong)
        scope = tjs.semantic_scope(default_model, clean, target=answer, contrast=wrong, internals=True)
        estimate = tjs.patching.attribution_patching_map(default_model, clean, corrupt, answer, wrong)
        mask = movable_cells(default_model, clean, corrupt)
        rows.append((effect, scope.internal("layer")[:-1], estimate, mask))
    return rows


def test_attribution_estimate_predicts_residual_patching_and_the_raw_map_does_not(layer_maps):
    """Measured (movable cells): attribution estimate 0.76, 0.98, 0.70, 0.73 (mean 0.79);
    raw ‖J^T v‖ layer map -0.02, 0.43, 0.17, 0.10. Over all cells the estimate reads 0.96,
    0.96, 0.70, 0.76 (both maps are exactly 0 on the unmovable cells, which counts as
    agreement). Bounds: estimate > 0.55 on every pair and mean > 0.65 over movable cells,
    > 0.6 over all cells, and > raw map + 0.25 on every pair. The same estimate with its
    cells shuffled (unrelated to the circuit) measures < 0.4 and must fail the bound."""
    shuffle = torch.Generator().manual_seed(0)
    movable, every, raw, shuffled = [], [], [], []
    for effect, sensitivity, estimate, mask in layer_maps:
        assert torch.equal(effect[~mask], torch.zeros(int((~mask).sum())))  # patching there is a no-op
        movable.append(spearman(estimate, effect, mask=mask))
        every.append(spearman(estimate, effect))
        raw.append(spearman(sensitivity, effect, mask=mask))
        order = torch.randperm(estimate.values.numel(), generator=shuffle)
        shuffled.append(spearman(estimate.values.flatten()[order].reshape(estimate.shape), effect, mask=mask))
    report = dict(movable=movable, all_cells=every, raw=raw, shuffled=shuffled)
    assert min(movable) > 0.55 and sum(movable) / len(movable) > 0.65, report
    assert min(every) > 0.6, report
    assert all(e > r + 0.25 for e, r in zip(movable, raw)), report
    assert max(shuffled) < 0.55, report  # the bound tells a related map from an unrelated one


def test_head_attribution_patching_finds_the_heads_that_restore_the_answer(default_model):
    """Per head (hook_z at every position). Measured, Spearman of the estimate with real head
    patching: 0.99, 0.99, 0.94, 0.96; patching the estimate's top-3 heads restores 93%, 95%,
    86%, 140% of the logit difference (best single heads: L23H4 for the capitals, L23H3 for
    IOI, L1H6 for the sun). The raw scope head map ranks by sensitivity (early layers, ~0
    correlation) and its top-3 heads restore ~0%. Bounds: Spearman > 0.85 and top-3 restore
    > 50% on every pair (a wrong sign, head index or position sum breaks them), and better
    than the raw map by 0.3."""
    model = default_model
    for clean, corrupt, answer, wrong in PAIRS:
        real = tjs.patching.patching_map(model, clean, corrupt, answer, wrong, site="head")
        estimate = tjs.patching.attribution_patching_map(model, clean, corrupt, answer, wrong, site="head")
        assert spearman(estimate, real) > 0.85, clean
        top3 = tjs.patching.patch_top(model, clean, corrupt, estimate, k=3, answer=answer, wrong=wrong)
        assert top3.recovered > 0.5, (clean, top3)
        # its top head is the single head whose real patch restores the most
        assert top3.patched[0] == divmod(int(real.values.flatten().argmax()), real.shape[1]), clean
        assert top3.labels[0] == real.top(1)[0].label
        raw = tjs.semantic_scope(model, clean, target=answer, contrast=wrong, internals=True)
        with pytest.warns(tjs.patching.RawSensitivityWarning):
            by_raw_map = tjs.patching.patch_top(model, clean, corrupt, raw, k=3, site="head", rank_by="scope")
        assert top3.recovered > by_raw_map.recovered + 0.3


def test_patch_top_leads_to_the_estimate_that_restores_the_answer(default_model):
    """The obvious call, ``patch_top(model, clean, corrupted, scope_result, site="head")``,
    ranks heads by attribution patching. Measured on IOI (README, environment there): its
    top 1/3/5 heads restore 57%/95%/108% of the logit difference, the raw scope head map's
    (layer-0 heads) ~0%. Bounds: default top-3 >= 0.3 and > the raw map's + 0.3."""
    clean, corrupt, answer, wrong = PAIRS[1]
    scope = tjs.semantic_scope(default_model, clean, target=answer, contrast=wrong, internals=True)
    default = tjs.patching.patch_top(default_model, clean, corrupt, scope, k=3, site="head")
    with pytest.warns(tjs.patching.RawSensitivityWarning):
        raw = tjs.patching.patch_top(default_model, clean, corrupt, scope, k=3, site="head", rank_by="scope")
    assert default.ranked_by == "attribution patching" and len(default.labels) == 3
    assert default.recovered >= 0.3 and default.recovered > raw.recovered + 0.3, (default, raw)
