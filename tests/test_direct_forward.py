"""The direct forward pass on a TransformerBridge (issue 24, scopes/direct_forward.py).

When nothing but the scope's own hooks would fire, the scope runs the wrapped Hugging Face
modules without the bridge's wrappers. Proven here: (1) on each architecture it is allowed for,
the path is taken and every score is bit-for-bit the bridge path's; (2) whatever the bridge
would run that the direct pass would not (a hook on any hook point, a user's torch hook,
processed weights, a replaced, added or patched module, a global hook) sends the call down the
bridge path, and the result is the bridge path's, the edit applied; (3) the model is as before
afterwards, an interrupt included.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

import tl_jacobian_scopes as tjs
from architectures import FAMILY_BY_NAME, tiny_family_model
from tiny_models import tiny_model, tiny_tokenizer
from tl_jacobian_scopes.models.access import ModelAccess, all_modules
from tl_jacobian_scopes.models.loading import bridge_from_hf, has_hooked_transformer
from tl_jacobian_scopes.scopes import direct_forward, engine

PROMPT = "the cat sat on the mat and the dog ran to"


def _bridge_family(name: str) -> Any:
    return bridge_from_hf(tiny_family_model(name), tiny_tokenizer(), f"tiny-{name}", device="cpu")


@functools.lru_cache(maxsize=None)
def _matrix_model(arch: str) -> Any:
    name = next(f.name for f in FAMILY_BY_NAME.values() if f.arch == arch)
    return _bridge_family(name)


@pytest.fixture
def llama():
    """A fresh tiny Llama bridge (each test edits it)."""
    return tiny_model("llama", "bridge")[0]


@pytest.fixture
def spy(monkeypatch):
    """Counts the direct passes run."""
    calls = []
    real = engine.run_direct

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "run_direct", counted)
    return calls


def _scores(model: Any, direct: bool) -> list[torch.Tensor]:
    """Every token-level score the direct pass serves, with the direct pass on or off."""
    direct_forward.ENABLED[0] = direct
    try:
        tokens = model.to_tokens(PROMPT)
        return [
            tjs.semantic_scope(model, PROMPT, target="dog").scores,
            tjs.semantic_scope(model, PROMPT, target="dog", contrast="cat").scores,
            tjs.temperature_scope(model, PROMPT).scores,
            tjs.fisher_scope(model, PROMPT, rank=1).scores,
            tjs.fisher_scope(model, PROMPT, rank=None).scores,
            tjs.semantic_scope(model, PROMPT, positions="all", target="next").scores,
            torch.stack([r.scores for r in tjs.semantic_scope(model, torch.cat([tokens, tokens.flip(-1)]), target=5)]),
            # prompts of two lengths (right-padded: a causal model needs no mask, so no forward kwargs)
            torch.cat([r.scores for r in tjs.temperature_scope(model, [PROMPT, "the cat sat"])]),
        ]
    finally:
        direct_forward.ENABLED[0] = True


def _assert_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), (x - y).abs().max()


# ---- (1) bit for bit, on every architecture it is allowed for --------------------------------


@pytest.mark.parametrize("arch", sorted(direct_forward.DIRECT_ARCHITECTURES))
def test_the_direct_pass_is_bit_for_bit_the_bridge_path(arch, spy):
    model = _matrix_model(arch)
    assert direct_forward.direct_plan(ModelAccess(model)) is not None, f"{arch}: the direct pass is not taken"
    direct = _scores(model, True)
    assert spy, "the direct pass never ran"
    n = len(spy)
    bridge = _scores(model, False)
    assert len(spy) == n  # switched off: the bridge path ran
    _assert_identical(direct, bridge)


def test_the_tiny_llama_takes_the_direct_pass_with_the_same_scores(llama, spy):
    direct = _scores(llama, True)
    assert len(spy) >= 7
    _assert_identical(direct, _scores(llama, False))


def test_internal_maps_keep_the_bridge_path(llama, spy):
    tjs.semantic_scope(llama, PROMPT, target="dog", internals=True)
    assert spy == []


def test_architectures_outside_the_list_keep_the_bridge_path(spy):
    model = _bridge_family("GPT2")
    assert direct_forward.direct_plan(ModelAccess(model)) is None
    tjs.semantic_scope(model, PROMPT)
    assert spy == []


@pytest.mark.skipif(not has_hooked_transformer(), reason="HookedTransformer not installed (TransformerLens 4.x leg)")
def test_a_hooked_transformer_keeps_its_own_path(spy):
    model = tiny_model("llama", "hooked")[0]
    assert direct_forward.direct_plan(ModelAccess(model)) is None
    tjs.semantic_scope(model, PROMPT)
    assert spy == []


# ---- (2) the fall-back -----------------------------------------------------------------------


def test_a_hook_on_any_hook_point_falls_back(llama):
    access = ModelAccess(llama)
    assert direct_forward.direct_plan(access) is not None
    names = sorted(llama.hook_dict)
    assert len(names) > 50
    hook_dict = llama.hook_dict
    for name in names:
        hook_dict[name].add_hook(lambda act, hook: None)  # on the hook point itself (a few refuse model.add_hook)
        try:
            assert direct_forward.direct_plan(access) is None, name
        finally:
            hook_dict[name].remove_hooks()
    assert direct_forward.direct_plan(access) is not None


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre", "blocks.1.mlp.hook_out", "blocks.0.ln2.hook_normalized",
                                  "ln_final.hook_normalized", "blocks.0.hook_resid_post"])
def test_an_editing_hook_is_applied_never_skipped(llama, spy, name):
    clean = tjs.semantic_scope(llama, PROMPT, target="dog").scores
    spy.clear()
    llama.add_hook(name, lambda act, hook: act * 1.5)
    try:
        hooked = _scores(llama, True)
        assert spy == []
        _assert_identical(hooked, _scores(llama, False))
        assert not torch.allclose(hooked[0], clean)  # the hook took effect
    finally:
        llama.reset_hooks()


def _edit(module: torch.nn.Module) -> Any:
    return module.register_forward_hook(lambda mod, args, out: out * 1.5)


@pytest.mark.parametrize("where", ["bridge component", "wrapped HF module", "pre-hook on the bridge"])
def test_a_users_torch_hook_falls_back(llama, spy, where):
    block = llama.blocks[0]
    if where == "bridge component":
        handle = _edit(block.mlp)
    elif where == "wrapped HF module":
        handle = _edit(block.mlp.original_component)
    else:
        handle = block.ln2.register_forward_pre_hook(lambda mod, args: (args[0] * 1.5,))
    clean = None
    try:
        hooked = _scores(llama, True)
        assert spy == []
        _assert_identical(hooked, _scores(llama, False))
    finally:
        handle.remove()
    clean = tjs.semantic_scope(llama, PROMPT, target="dog").scores
    assert spy and not torch.allclose(hooked[0], clean)


class _Doubled(torch.nn.Module):
    """A user's module: a replacement of a wrapped module, or a module added to the tree."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2.0


def test_a_replaced_module_falls_back_and_is_run(llama, spy):
    hf_mlp = llama.blocks[1].mlp.original_component
    clean = tjs.semantic_scope(llama, PROMPT, target="dog").scores
    assert spy
    spy.clear()
    act = hf_mlp.act_fn
    hf_mlp.act_fn = _Doubled(act)
    try:
        replaced = _scores(llama, True)
        assert spy == []
        _assert_identical(replaced, _scores(llama, False))
        assert not torch.allclose(replaced[0], clean)
    finally:
        hf_mlp.act_fn = act
    assert torch.equal(tjs.semantic_scope(llama, PROMPT, target="dog").scores, clean)
    assert spy  # the original module back: the direct pass again


class _PassThrough(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def test_a_replaced_bridge_component_falls_back(llama, spy):
    """A bridge component in the HF model's tree swapped for a user's module (what the bridge runs)."""
    layers = llama.original_model.model.layers
    layers[0] = _PassThrough(layers[0])
    tjs.semantic_scope(llama, PROMPT)
    assert spy == []


def test_an_added_unknown_module_and_a_patched_forward_fall_back(llama):
    access = ModelAccess(llama)
    llama.original_model.model.extra = _Doubled(torch.nn.Identity())
    assert direct_forward.direct_plan(access) is None
    del llama.original_model.model.extra
    assert direct_forward.direct_plan(access) is not None
    norm = llama.blocks[0].ln1.original_component
    norm.forward = lambda x: x
    assert direct_forward.direct_plan(access) is None
    del norm.forward
    assert direct_forward.direct_plan(access) is not None


def test_processed_weights_fall_back(llama, spy):
    llama.enable_compatibility_mode(disable_warnings=True)
    assert direct_forward.direct_plan(ModelAccess(llama)) is None
    tjs.semantic_scope(llama, PROMPT, target="dog", contrast="cat")
    assert spy == []


def test_a_global_module_hook_falls_back(llama, spy):
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
    try:
        assert direct_forward.direct_plan(ModelAccess(llama)) is None
    finally:
        handle.remove()
    assert direct_forward.direct_plan(ModelAccess(llama)) is not None


# ---- (3) the model afterwards ----------------------------------------------------------------


def _state(model: Any) -> tuple[Any, ...]:
    hf = model.original_model
    return (tuple(map(id, all_modules(model))), hf.config._attn_implementation,
            tuple(id(m) for layer in hf.model.layers for m in layer._modules.values()))


def test_the_model_is_as_before_after_a_direct_pass_and_after_an_interrupt(llama, monkeypatch):
    before = _state(llama)
    tjs.fisher_scope(llama, PROMPT, rank=1)
    assert _state(llama) == before
    plan = direct_forward.direct_plan(ModelAccess(llama))
    assert plan is not None

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(plan.base, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        direct_forward.run_direct(plan, llama.to_tokens(PROMPT), 1.0)
    monkeypatch.undo()
    assert _state(llama) == before
    assert direct_forward.direct_plan(ModelAccess(llama)) is not None


def test_the_call_walk_is_shared_only_for_the_call(llama):
    """frozen() publishes its module walk for the direct pass's checks, and takes it back (nested too)."""
    from tl_jacobian_scopes.models.access import walked_modules

    assert walked_modules(llama) is None
    access = ModelAccess(llama)
    with access.frozen():
        outer = walked_modules(llama)
        assert outer is not None and [id(m) for m in outer] == [id(m) for m in all_modules(llama)]
        with access.frozen():
            assert walked_modules(llama) is not None
        assert walked_modules(llama) is outer
    assert walked_modules(llama) is None
