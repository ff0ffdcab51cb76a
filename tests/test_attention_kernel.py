"""Token-level scopes run the bridge's attention with SDPA; internal maps and attention hooks keep eager.

Scores must be the same either way (eager is forced here the way a user would force it: a
hook inside attention), the model's attention setting must be exactly as before after any
call (an error or an interrupt included), and the memory guard must follow the kernel.
"""

import sys
from pathlib import Path

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
from tl_jacobian_scopes.models.access import ModelAccess
from tl_jacobian_scopes.models.hook_names import internal_hook_names
from tl_jacobian_scopes.scopes import engine

PROMPTS = ["the cat sat on the mat and the dog ran to the house", "a big red sun"]
PATTERN_HOOK = "blocks.0.attn.hook_pattern"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", "bridge")[0]


def _attention_state(model):
    hf = model.original_model
    return (hf.config._attn_implementation,
            [("forward" in vars(b.attn), "forward" in vars(b.attn.original_component)) for b in model.blocks])


def _sdpa_calls(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def _eager(model, fn, *args, **kwargs):
    """The same call with eager attention, forced by a no-op hook inside attention (which must fire)."""
    fired = []
    with model.hooks(fwd_hooks=[(PATTERN_HOOK, lambda act, hook: fired.append(act.shape))]):
        assert engine.attention_kernel(ModelAccess(model)) == "eager"
        result = fn(model, *args, **kwargs)
    assert fired, "the hook inside attention did not fire: eager attention was not used"
    return result


def test_the_kernel_follows_the_hooks_a_call_needs(llama):
    access = ModelAccess(llama)
    assert engine.attention_kernel(access) == "sdpa"
    assert engine.attention_kernel(access, internal_hook_names(access.n_layers)) == "eager"
    assert engine.attention_kernel(access, ["blocks.1.attn.hook_z"]) == "eager"
    assert engine.attention_kernel(access, ["blocks.1.hook_resid_pre"]) == "sdpa"
    # GPT-2's joint-QKV attention and HookedTransformer's einsum attention have no SDPA path here.
    assert engine.attention_kernel(ModelAccess(tiny_model("gpt2", "bridge")[0])) == "eager"


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("method, options", [("semantic", {}), ("temperature", {}), ("fisher", {"rank": 1}),
                                             ("fisher", {"rank": 3})])
def test_sdpa_and_eager_scores_agree_on_a_tiny_model(llama, monkeypatch, method, options, padding_side):
    eager = _eager(llama, tjs.jacobian_scope, PROMPTS, method, padding_side=padding_side, **options)
    tjs.semantic_scope(llama, PROMPTS[0])  # the once-per-model output self-check runs its own SDPA pass
    calls = _sdpa_calls(monkeypatch)
    fast = tjs.jacobian_scope(llama, PROMPTS, method, padding_side=padding_side, **options)
    assert len(calls) == llama.cfg.n_layers, "SDPA did not run in every layer"
    for a, b in zip(fast, eager):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-7)


def test_internal_maps_keep_eager_attention_and_agree_on_token_scores(llama, monkeypatch):
    calls = _sdpa_calls(monkeypatch)
    with_maps = tjs.semantic_scope(llama, PROMPTS[0], internals=True)
    assert calls == [] and with_maps.has_internals
    torch.testing.assert_close(tjs.semantic_scope(llama, PROMPTS[0]).scores, with_maps.scores,
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["semantic", "fisher"])
def test_sdpa_and_eager_scores_agree_on_the_default_model(default_model, method):
    prompt = "The capital of France is Paris, and the capital of Italy is"
    fast = tjs.jacobian_scope(default_model, prompt, method)
    eager = _eager(default_model, tjs.jacobian_scope, prompt, method)
    torch.testing.assert_close(fast.scores, eager.scores, rtol=1e-4, atol=1e-6)
    assert [t.position for t in fast.top(3)] == [t.position for t in eager.top(3)]


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("raised", [RuntimeError("boom"), _Interrupt()])
def test_the_attention_setting_is_restored_after_an_error_or_interrupt(llama, raised):
    before = _attention_state(llama)  # "eager" on TransformerLens 4 (the bridge forces it)
    seen = []

    def fail(act, hook):
        seen.append(_attention_state(llama))
        raise raised

    with pytest.raises(type(raised)):
        with llama.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", fail)]):
            tjs.semantic_scope(llama, PROMPTS[0])
    assert seen and seen[0][0] == "sdpa" and all(ours for ours, _ in seen[0][1]), "the hook ran without SDPA"
    assert _attention_state(llama) == before
    tjs.semantic_scope(llama, PROMPTS[0])
    assert _attention_state(llama) == before


def test_the_memory_guard_follows_the_kernel(llama, monkeypatch):
    access = ModelAccess(llama)
    n = 4096
    sdpa, eager = (engine.scope_memory(access, n, kernel=k) for k in ("sdpa", "eager"))
    assert sdpa < eager / 2  # eager keeps T x T per head and layer
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str((sdpa + eager) // 2))
    engine.check_memory(access, n)  # token scores: SDPA fits
    with pytest.raises(tjs.ScopeMemoryError, match="without internals=True"):
        engine.check_memory(access, n, internals=True)


def test_the_guard_estimate_bounds_the_measured_peak_at_a_small_size():
    """One fresh process: peak resident memory of a 256-token Semantic scope on the default model."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import long_context

    from tl_jacobian_scopes.models.loading import default_backend

    # The default model is a TransformerBridge on TransformerLens 4.x (SDPA) and a
    # HookedTransformer on 3.x (its own attention: eager); the guard must bound either.
    kernel = "sdpa" if default_backend() == "bridge" else "eager"
    row = long_context.run_child("semantic", 256, kernel)
    assert "error" not in row, row
    assert row["kernel"] == kernel
    assert 0 < row["peak_mib"] <= row["estimate_mib"], row
