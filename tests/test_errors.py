"""Bad inputs get a clear error that names the fix, and leave the model exactly as it was."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import BACKENDS, TINY_TEXTS, tiny_hf_model, tiny_model, tiny_tokenizer
from tl_jacobian_scopes.models import bridge_from_hf, hook_count

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    return tiny_model("llama", request.param)[0]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


def _state(model):
    return (
        model.training,
        [p.requires_grad for p in model.parameters()],
        hook_count(model),
    )


# (scope function, kwargs, expected error, message fragment that names the fix)
BAD_INPUTS = [
    ("fisher", dict(prompt=""), tjs.PromptError, "empty"),
    ("fisher", dict(prompt=" ".join(["the"] * 40)), tjs.PromptError, "context holds 32"),
    ("fisher", dict(prompt=torch.ones(2, 2, 2, dtype=torch.long)), tjs.PromptError, r"\[pos\]"),
    ("fisher", dict(prompt=torch.tensor([1.0, 2.0])), tjs.PromptError, "integers"),
    ("fisher", dict(prompt=[1, 5, 10_000]), tjs.PromptError, "must lie in"),
    ("fisher", dict(prompt=torch.zeros(0, dtype=torch.long)), tjs.PromptError, "no tokens"),
    ("fisher", dict(prompt=3.5), tjs.PromptError, "string or token ids"),
    ("semantic", dict(target="the cat"), tjs.TargetError, "not one"),
    ("semantic", dict(target=""), tjs.TargetError, "empty"),
    ("semantic", dict(target=10_000), tjs.TargetError, "outside the vocabulary"),
    ("semantic", dict(target=-1), tjs.TargetError, "outside the vocabulary"),
    ("semantic", dict(target=2.5), tjs.TargetError, "token string or a token id"),
    ("semantic", dict(target="dog", contrast="dog"), tjs.TargetError, "same token"),
    ("semantic", dict(contrast="dog cat"), tjs.TargetError, "contrast"),
    ("semantic", dict(position=7), tjs.PositionError, "0..6"),
    ("temperature", dict(position=-8), tjs.PositionError, "outside the prompt"),
    ("fisher", dict(position=1.5), tjs.PositionError, "must be an int"),
    ("fisher", dict(rank=0), tjs.ScopeError, "rank must be"),
    ("fisher", dict(rank=33), tjs.ScopeError, "rank must be"),
    ("fisher", dict(rank="1"), tjs.ScopeError, "rank must be"),
]


@pytest.mark.parametrize("scope,kwargs,error,fragment", BAD_INPUTS, ids=[f"{b[0]}-{list(b[1])[0]}-{i}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_refused_and_model_restored(model, scope, kwargs, error, fragment):
    model.train()  # a state the scope must change temporarily and then restore
    before = _state(model)
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", PROMPT)
    with pytest.raises(error, match=fragment):
        tjs.jacobian_scope(model, prompt, scope, **kwargs)
    assert _state(model) == before
    model.eval()


def test_unknown_scope_names_the_choices(model):
    with pytest.raises(tjs.UnknownScopeError, match="Did you mean 'fisher'"):
        tjs.jacobian_scope(model, PROMPT, "fischer")


def test_error_during_forward_restores_state_and_keeps_user_hooks(model):
    """A failure inside the forward pass: our hooks are removed, the user's stay."""
    calls = []
    model.blocks[0].hook_resid_pre.add_hook(lambda act, hook: calls.append(1))
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    n_hooks = hook_count(model)

    def explode(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", explode)]):
            tjs.fisher_scope(model, PROMPT)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert hook_count(model) == n_hooks
    tjs.fisher_scope(model, PROMPT)  # works again, and the user's hook still fires
    assert calls
    model.reset_hooks()
    model.eval()


def test_success_restores_state(model):
    model.train()
    before = _state(model)
    tjs.semantic_scope(model, PROMPT)
    tjs.fisher_scope(model, PROMPT, rank=None)
    assert _state(model) == before
    model.eval()


def test_not_a_transformerlens_model():
    hf = tiny_hf_model("llama")
    with pytest.raises(tjs.MissingHookError, match="HookedTransformer or a TransformerBridge"):
        tjs.fisher_scope(hf, PROMPT)


def test_model_without_the_needed_hook(model):
    class Hookless:
        cfg = model.cfg
        hook_dict = {k: v for k, v in model.hook_dict.items() if k != "unembed.hook_in"}

        def hooks(self, *a, **k):
            raise AssertionError("never reached")

    with pytest.raises(tjs.MissingHookError, match="unembed.hook_in"):
        tjs.fisher_scope(Hookless(), PROMPT)


def test_processed_model_refused_for_temperature():
    hf = tiny_hf_model("llama")
    bridge = bridge_from_hf(hf, tiny_tokenizer(), "tiny-llama", device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True)
    before = _state(bridge)
    with pytest.raises(tjs.ProcessedWeightsError, match="no_processing=True"):
        tjs.temperature_scope(bridge, PROMPT)
    assert _state(bridge) == before


def test_scope_too_big_for_memory_is_refused_before_running(model, monkeypatch):
    """A prompt that fits the context but not memory: a clear error naming the limit."""
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", "20000")  # bytes
    ran = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: ran.append(1))]):
        with pytest.raises(tjs.ScopeMemoryError, match=r"at most about \d+ tokens"):
            tjs.fisher_scope(model, " ".join(["the"] * 30))
    assert not ran  # refused before any forward pass
    assert isinstance(tjs.ScopeMemoryError("x"), MemoryError)


# ---- ids are integers ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [torch.tensor(1.5), torch.tensor(1.0), torch.tensor(True), torch.tensor([2.5])])
def test_a_non_integral_target_id_is_refused(tiny, target):
    with pytest.raises(tjs.TargetError, match="integer"):
        tjs.semantic_scope(tiny, TINY_TEXTS[0], target=target, progress=False)
