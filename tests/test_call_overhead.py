"""Per-call overhead removed from ModelAccess.frozen() and input checks (issue 12), with the
state guarantees intact: the same modules guarded, eval mode inside, every flag restored."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import BACKENDS, tiny_model
from tl_jacobian_scopes.models.access import ModelAccess, all_modules

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    return tiny_model("llama", request.param)[0]


def _hf_block(model):
    """A module of the wrapped HF model (bridge), or a block (HookedTransformer)."""
    wrapped = getattr(model, "original_model", None)
    return wrapped.model.layers[0] if wrapped is not None else model.blocks[0]


def test_all_modules_is_the_model_and_the_wrapped_hf_model(model):
    expected = {id(m) for m in model.modules()}
    wrapped = getattr(model, "original_model", None)
    if wrapped is not None:
        expected |= {id(m) for m in wrapped.modules()}
        assert len(expected) > len(list(model.modules()))  # the HF model adds modules
    found = all_modules(model)
    assert len(found) == len(expected) == len({id(m) for m in found})
    assert {id(m) for m in found} == expected


def test_a_model_in_eval_mode_is_not_walked_by_eval(model, monkeypatch):
    """eval() on the bridge costs tens of ms: skipped when every module is already in eval mode."""
    model.eval()
    calls = []
    monkeypatch.setattr(model, "eval", lambda: calls.append(1) or model)
    with ModelAccess(model).frozen():
        assert not any(m.training for m in all_modules(model))
        assert not any(p.requires_grad for p in model.parameters())
    assert calls == []


def test_a_module_in_training_mode_gets_eval_inside_and_its_flag_back(model):
    model.eval()
    hf_block = _hf_block(model)
    hf_block.train()  # one module (of the wrapped model, on a bridge) only
    flags = [p.requires_grad for p in model.parameters()]
    try:
        with ModelAccess(model).frozen():
            assert not any(m.training for m in all_modules(model))
        assert hf_block.training and all(m.training for m in hf_block.modules())
        assert sum(m.training for m in all_modules(model)) == len(list(hf_block.modules()))
        assert [p.requires_grad for p in model.parameters()] == flags
    finally:
        model.eval()


def test_text_prompt_scores_equal_token_prompt_scores_without_a_warning(model, recwarn):
    """The tokenization check reuses the prompt's ids: a round-trippable text draws no warning."""
    by_text = tjs.semantic_scope(model, PROMPT)
    by_ids = tjs.semantic_scope(model, model.to_tokens(PROMPT))
    torch.testing.assert_close(by_text.scores, by_ids.scores)
    assert not [w for w in recwarn if issubclass(w.category, tjs.TokenizationWarning)]


def test_the_attention_walk_finds_the_hook_points_modules_finds():
    """_hook_points_within (a direct walk) = every hook point of attn.modules(), the slow reference."""
    from tl_jacobian_scopes.scopes import engine

    bridge = tiny_model("llama", "bridge")[0]
    modules = engine._sdpa_attention_modules(ModelAccess(bridge))
    assert modules
    want = {id(m) for attn in modules for m in attn.modules() if hasattr(m, "fwd_hooks")}
    found = engine._hook_points_within(modules)
    assert set(found) == want and len(want) >= 10 * len(modules)


def test_the_call_decides_the_kernel_once_and_uses_it_everywhere(monkeypatch):
    """One attention_kernel walk per call; the memory guard and the forward pass see its answer."""
    from tl_jacobian_scopes.scopes import driver, engine, runner

    bridge = tiny_model("llama", "bridge")[0]
    calls, seen = [], []
    real_kernel, real_guard = engine.attention_kernel, engine.check_memory
    monkeypatch.setattr(driver, "attention_kernel", lambda *a: calls.append(real_kernel(*a)) or calls[-1])
    monkeypatch.setattr(runner, "attention_kernel", lambda *a: calls.append(real_kernel(*a)) or calls[-1])
    monkeypatch.setattr(driver, "check_memory", lambda *a, **k: seen.append(k["kernel"]) or real_guard(*a, **k))
    tjs.semantic_scope(bridge, PROMPT)
    tjs.semantic_scope(bridge, PROMPT, internals=True)
    assert calls == ["sdpa", "eager"] and seen == calls
