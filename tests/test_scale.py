"""Batches, many positions, and the stochastic Fisher estimator (issue: fast at scale)."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import BACKENDS, assert_close, tiny_model

PROMPTS = ["the cat sat on the mat", "a dog ran to the big red house and it", "the sun", "we love food"]


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    return tiny_model("llama", request.param)[0]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize(
    "scope,kwargs",
    [
        ("semantic", dict(target=["cat", "dog", "moon", "city"])),
        ("semantic", dict(target="dog", contrast="cat")),
        ("temperature", {}),
        ("fisher", dict(rank=3)),
        ("fisher", dict(rank=2, internals=True)),
    ],
)
def test_batch_equals_one_by_one(model, scope, kwargs, padding_side):
    batch = tjs.jacobian_scope(model, PROMPTS, scope, padding_side=padding_side, **kwargs)
    assert isinstance(batch, list) and len(batch) == len(PROMPTS)
    for i, (prompt, got) in enumerate(zip(PROMPTS, batch)):
        single_kwargs = dict(kwargs)
        if isinstance(kwargs.get("target"), list):
            single_kwargs["target"] = kwargs["target"][i]
        want = tjs.jacobian_scope(model, prompt, scope, **single_kwargs)
        assert got.str_tokens == want.str_tokens and got.position == want.position
        assert got.target == want.target and got.target_prob == pytest.approx(want.target_prob, rel=1e-4)
        assert_close(got.scores, want.scores)
        if kwargs.get("internals"):
            for site in ("layer", "attn", "mlp", "head"):
                assert_close(got.internal(site), want.internal(site), rtol=1e-3)


def test_batch_positions_per_prompt(model):
    batch = tjs.fisher_scope(model, PROMPTS[:2], position=[2, -2])
    assert [r.position for r in batch] == [2, len(batch[1].str_tokens) - 2]
    assert_close(batch[1].scores, tjs.fisher_scope(model, PROMPTS[1], position=-2).scores)


@pytest.mark.parametrize(
    "scope,kwargs",
    [("semantic", dict(target="next")), ("temperature", {}), ("fisher", dict(rank=2)), ("semantic", dict(target="dog"))],
)
def test_many_positions_equal_separate_calls(model, scope, kwargs):
    text = PROMPTS[1]
    matrix = tjs.jacobian_scope(model, text, scope, positions="all", **kwargs)
    assert isinstance(matrix, tjs.results.ScopeMatrix)
    n = len(matrix.str_tokens)
    assert matrix.scores.shape == (n, n) and matrix.positions == list(range(n))
    assert torch.all(matrix.scores.triu(1) == 0)  # causality: nothing right of the explained position
    tokens = model.to_tokens(text)[0]
    for pos in (0, 3, n - 1):
        single_kwargs = dict(kwargs)
        if kwargs.get("target") == "next":
            single_kwargs["target"] = int(tokens[pos + 1]) if pos + 1 < n else None
        want = tjs.jacobian_scope(model, text, scope, position=pos, **single_kwargs)
        assert matrix[pos].target == want.target
        assert_close(matrix.scores[pos], want.scores)
    df = matrix.to_dataframe()
    assert len(df) == n * n and set(df.columns) >= {"explained", "target", "position", "token", "score"}


def test_batch_of_many_positions(model):
    out = tjs.temperature_scope(model, PROMPTS[:2], positions=[1, 2])
    assert [len(m) for m in out] == [2, 2]
    assert_close(out[1][1].scores, tjs.temperature_scope(model, PROMPTS[1], position=2).scores)


def test_stochastic_fisher_is_unbiased(model):
    """The estimate lies within a few of its own standard errors of the exact trace.

    Scale-free: z = (estimate - exact) / stderr per token. Per token |z| < 4.5, and the mean
    z over tokens stays within ±3 (the tokens share probes, so their z move together and
    their mean does not shrink). At 512 probes this refuses a 20% bias (checked below on
    the same run) and, in most seeds, a 10-15% one.
    """
    text = PROMPTS[1]
    exact = tjs.fisher_scope(model, text, rank=None)
    live = exact.scores > 0

    def unbiased_looking(scores, stderr):
        z = ((scores - exact.scores) / stderr.clamp_min(1e-12))[live]
        return float(z.abs().max()) < 4.5 and abs(float(z.mean())) < 3.0

    for deflate in (4, 0):
        est = tjs.fisher_scope(model, text, rank=None, samples=512, deflate=deflate, seed=1)
        assert est.stderr is not None and est.stderr.shape == exact.scores.shape
        assert est.params["estimator"] == "stochastic"
        assert unbiased_looking(est.scores, est.stderr), (est.scores, exact.scores, est.stderr)
    # Probes √1.2 too long (at deflate=0 all of the estimate is stochastic): refused.
    assert not unbiased_looking(1.2 * est.scores, 1.2 * est.stderr)
    # Deflation removes the dominant directions from the noise: smaller errors.
    plain = tjs.fisher_scope(model, text, rank=None, samples=200, deflate=0, seed=3)
    deflated = tjs.fisher_scope(model, text, rank=None, samples=200, deflate=8, seed=3)
    assert deflated.stderr.sum() < plain.stderr.sum()


def test_stochastic_fisher_is_reproducible(model):
    a = tjs.fisher_scope(model, PROMPTS[0], rank=None, samples=16, seed=5)
    b = tjs.fisher_scope(model, PROMPTS[0], rank=None, samples=16, seed=5)
    c = tjs.fisher_scope(model, PROMPTS[0], rank=None, samples=16, seed=6)
    assert torch.equal(a.scores, b.scores) and not torch.equal(a.scores, c.scores)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(rank=1, samples=8), "rank=None"),
        (dict(rank=None, samples=1), "samples must be"),
        (dict(rank=None, samples=8, deflate=-1), "deflate must be"),
    ],
)
def test_stochastic_arguments_are_checked(model, kwargs, fragment):
    with pytest.raises(tjs.ScopeError, match=fragment):
        tjs.fisher_scope(model, PROMPTS[0], **kwargs)


def test_batch_and_position_errors(model):
    with pytest.raises(tjs.PositionError, match="not both"):
        tjs.fisher_scope(model, PROMPTS[0], position=1, positions=[1])
    with pytest.raises(tjs.PositionError, match="one per prompt"):
        tjs.fisher_scope(model, PROMPTS[:2], position=[1, 2, 3])
    with pytest.raises(tjs.TargetError, match="for 4 prompts"):
        tjs.semantic_scope(model, PROMPTS, target=["cat", "dog"])
    with pytest.raises(tjs.PromptError, match="empty"):
        tjs.fisher_scope(model, ["the cat", ""])


@pytest.mark.parametrize("scope,kwargs", [("semantic", dict(target=["cat", "dog", "moon", "city"])), ("fisher", {})])
def test_long_lists_run_in_sub_batches(model, scope, kwargs):
    """A list longer than batch_size is split (per-prompt lists sliced with it), same results."""
    whole = tjs.jacobian_scope(model, PROMPTS, scope, batch_size=16, **kwargs)
    split = tjs.jacobian_scope(model, PROMPTS, scope, batch_size=3, position=[-1, -2, -1, -1], **kwargs)
    assert len(split) == len(PROMPTS)
    for i in (0, 2, 3):
        assert_close(split[i].scores, whole[i].scores)
    assert_close(split[1].scores, tjs.jacobian_scope(model, PROMPTS[1], scope, position=-2,
                                               **({"target": "dog"} if scope == "semantic" else {})).scores)
    with pytest.raises(tjs.ScopeError, match="batch_size"):
        tjs.jacobian_scope(model, PROMPTS, scope, batch_size=0, **kwargs)
