"""Per-layer, per-head, attention- and MLP-output maps against brute-force Jacobians."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import BACKENDS, KINDS, assert_close, reference_internal_jacobians, reference_internal_scores, tiny_model

PROMPT = "the cat sat on the mat and the dog ran to the"


@pytest.fixture(scope="module", params=[(k, b) for k in KINDS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    kind, backend = request.param
    model, hf = tiny_model(kind, backend)
    tokens = model.to_tokens(PROMPT)[0]
    position = 9
    jacobians, (y, W_U, b_U) = reference_internal_jacobians(hf, tokens, position, model.cfg.n_heads)
    return model, position, jacobians, (y, W_U, b_U)


@pytest.mark.parametrize(
    "scope,kwargs,ref",
    [
        ("semantic", dict(target="dog"), dict(scope="semantic")),
        ("temperature", {}, dict(scope="temperature")),
        ("fisher", dict(rank=2), dict(scope="fisher", rank=2)),
        ("fisher", dict(rank=None), dict(scope="fisher", rank=None)),
    ],
)
def test_internal_maps_match_brute_force(tiny, scope, kwargs, ref):
    model, position, jacobians, (y, W_U, b_U) = tiny
    result = tjs.jacobian_scope(model, PROMPT, scope, position=position, internals=True, **kwargs)
    if scope == "semantic":
        ref = dict(ref, target=result.target)
    n_layers, n_heads, n_tokens = model.cfg.n_layers, model.cfg.n_heads, len(result.str_tokens)
    assert result.layer_scores.shape == (n_layers + 1, n_tokens)
    assert result.attn_scores.shape == result.mlp_scores.shape == (n_layers, n_tokens)
    assert result.head_scores.shape == (n_layers, n_heads, n_tokens)
    for site in ("layer", "attn", "mlp", "head"):
        expected = torch.stack([reference_internal_scores(J, y, W_U, b_U, **ref) for J in jacobians[site]])
        if site == "head":
            expected = expected.transpose(1, 2)  # [L, pos, heads] -> [L, heads, pos]
        assert_close(getattr(result, f"{site}_scores"), expected)
    # Layer 0 is the token scope, and nothing after the explained position matters.
    assert_close(result.layer_scores[0], result.scores, rtol=1e-5)
    assert torch.all(result.layer_scores[:, position + 1 :] == 0)
    assert torch.all(result.head_scores[..., position + 1 :] == 0)


def test_internals_do_not_change_token_scores(tiny):
    model, *_ = tiny
    plain = tjs.fisher_scope(model, PROMPT, rank=2)
    full = tjs.fisher_scope(model, PROMPT, rank=2, internals=True)
    torch.testing.assert_close(plain.scores, full.scores)
    assert plain.layer_scores is None and not plain.has_internals


def test_scaled_normalization_and_helpers(tiny):
    model, position, *_ = tiny
    r = tjs.semantic_scope(model, PROMPT, target="dog", position=position, internals=True)
    scaled = r.internal("layer", "scaled")
    torch.testing.assert_close(scaled, r.layer_scores * r.internal_norms["layer"])
    q = tjs.fisher_scope(model, PROMPT, position=position, internals=True)
    torch.testing.assert_close(q.internal("mlp", "scaled"), q.mlp_scores * q.internal_norms["mlp"] ** 2)

    heads = r.top_heads(3)
    agg = r.head_scores.pow(2).sum(-1).sqrt()  # norm over all positions
    assert heads[0].score == pytest.approx(float(agg.max()))
    assert (heads[0].layer, heads[0].head) == tuple(int(i) for i in torch.unravel_index(agg.argmax(), agg.shape))
    assert q.top_layers(1, site="mlp")[0][1] == pytest.approx(float(q.mlp_scores.sum(-1).max()))

    cell = r.top_cells(1, site="layer")[0]
    assert cell.score == pytest.approx(float(scaled.max())) and cell.token == r.str_tokens[cell.position]
    at = r.at_position(3)
    torch.testing.assert_close(at["head"], r.head_scores[..., 3])
    summary = r.layer_summary()
    assert len(summary) == model.cfg.n_layers + 1 and summary.iloc[-1]["layer"] == "final"

    long = r.to_dataframe(internals=True)
    assert {"scope", "site", "layer", "head", "position", "token", "score", "score_scaled"} <= set(long.columns)
    n_layers, n_heads, n = model.cfg.n_layers, model.cfg.n_heads, r.n_tokens
    assert len(long) == (n_layers + 1) * n + 2 * n_layers * n + n_layers * n_heads * n
    row = long[(long["site"] == "head") & (long["layer"] == 1) & (long["head"] == 2) & (long["position"] == 4)]
    assert row.score.item() == pytest.approx(float(r.head_scores[1, 2, 4]))

    again = tjs.results.ScopeResult.from_dict(r.to_dict())
    torch.testing.assert_close(again.head_scores, r.head_scores)
    with pytest.raises(ValueError, match="internals=True"):
        tjs.fisher_scope(model, PROMPT).internal("layer")
