"""Scopes on a model carrying the user's own hooks: TransformerLens hooks shape what is
explained, torch hooks on the bridge's wrapped modules never make a scope explain another
model, and hooks that change the logits after y or the gradients are refused."""

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import BACKENDS, TINY_TEXTS, tiny_model
from tl_jacobian_scopes.errors import ScopeError
from tl_jacobian_scopes.models import hook_count

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", "bridge")[0]


# ---- the user's TransformerLens hooks shape what a scope explains --------------------------------


def _zero_head(head, n_heads):
    def hook(act, hook):
        # hook_z is [batch, pos, head, d_head] on HookedTransformer, [batch, pos, head * d_head] on the bridge.
        act = act.clone()
        act.view(*act.shape[:2], n_heads, -1)[:, :, head] = 0
        return act
    return hook


@pytest.mark.parametrize("backend", BACKENDS)
def test_scopes_explain_the_model_with_the_users_hooks(backend):
    """A user's hooks (an ablation attached with model.add_hook) fire in the scope's forward
    pass, once per call, and the scores are those of the hooked model; the hooks stay attached."""
    model = tiny_model("llama", backend)[0]
    prompt = "the cat sat on the mat and the"
    plain = tjs.semantic_scope(model, prompt, target=" cat")
    fisher_plain = tjs.fisher_scope(model, prompt, rank=2)
    calls = []
    model.add_hook("blocks.0.attn.hook_z", lambda act, hook: calls.append(hook.name))
    model.add_hook("blocks.1.attn.hook_z", _zero_head(0, model.cfg.n_heads))
    try:
        ablated = tjs.semantic_scope(model, prompt, target=" cat")
        fisher_ablated = tjs.fisher_scope(model, prompt, rank=2)
        assert len(calls) == 2  # one forward pass per call (the VJPs are backward passes)
        for before, after in ((plain, ablated), (fisher_plain, fisher_ablated)):
            assert (before.scores - after.scores).abs().max() > 1e-3 * before.scores.abs().max()
        # Independent check: with every attention layer's output zeroed, position t's residual
        # depends on token t alone, so every other token's Semantic score is exactly 0.
        model.reset_hooks()
        for layer in range(model.cfg.n_layers):
            model.add_hook(f"blocks.{layer}.hook_attn_out", lambda act, hook: torch.zeros_like(act))
        attached = hook_count(model)
        local = tjs.semantic_scope(model, prompt, target=" cat")
        assert local.scores[local.position] > 0
        assert float(local.scores[: local.position].abs().max()) == 0.0
        assert float(plain.scores[: plain.position].abs().max()) > 0  # not so without the hooks
        assert hook_count(model) == attached > 0  # still attached
    finally:
        model.reset_hooks()


# ---- a scope called from a hook; a hook that vmap cannot batch -----------------------------------


@pytest.mark.parametrize("hook_name", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"])
def test_scope_called_from_a_hook_during_a_scope_gives_a_scope_error(model, hook_name):
    """A user hook that calls a scope on the same model (guarded against recursion) while a
    scope runs: the outer call's hooks fire in the inner forward (the inner call fails with
    "never reached 'unembed.hook_in'", the outer one's leaf is replaced) and a plain
    RuntimeError from autograd reaches the user. It must work or raise a ScopeError."""
    depth = {"n": 0}

    def nested(act, hook):
        if depth["n"] == 0:
            depth["n"] += 1
            try:
                tjs.semantic_scope(model, "a dog ran")
            except ScopeError:
                pass
            finally:
                depth["n"] -= 1

    model.add_hook(hook_name, nested)
    try:
        try:
            tjs.semantic_scope(model, PROMPT)
        except ScopeError:
            pass
    finally:
        model.reset_hooks()
    assert hook_count(model) == 0


def test_one_backward_per_probe_fallback_works_when_all_probes_fit_one_chunk(model):
    """batched_vjp tries the vectorized backward with retain_graph=False on the last (here:
    the only) chunk; when vmap refuses an op, that attempt has already freed the graph, so
    the per-probe fallback fails with 'Trying to backward through the graph a second time'
    (a plain RuntimeError) instead of computing the scores. Here the unbatchable op is an
    identity autograd.Function whose backward reads a value (data-dependent under vmap)."""

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, grad):
            assert float(grad.abs().sum()) >= 0  # .item(): no batching rule
            return grad

    expected = tjs.fisher_scope(model, PROMPT, rank=4)
    model.add_hook("blocks.1.hook_resid_pre", lambda act, hook: Identity.apply(act))
    try:
        got = tjs.fisher_scope(model, PROMPT, rank=4)
    finally:
        model.reset_hooks()
    assert torch.allclose(got.scores, expected.scores, rtol=1e-4, atol=1e-8)


# ---- torch hooks on the bridge's wrapped modules; hooks after y or on gradients ------------------


def _replace_output(module, args, output):
    """A user's torch hook that rewrites the wrapped HF attention's output (deterministically)."""
    out = output[0] if isinstance(output, tuple) else output
    changed = 0.1 * out + torch.linspace(-3, 3, out.numel()).reshape(out.shape).to(out.dtype)
    return (changed, *output[1:]) if isinstance(output, tuple) else changed


@pytest.mark.parametrize("internals", [False, True], ids=["token-level", "internals"])
@pytest.mark.parametrize("where", ["attn.original_component", "attn.original_component.o_proj"])
def test_a_torch_hook_on_a_wrapped_module_never_makes_the_scope_explain_another_model(where, internals):
    from tl_jacobian_scopes.models.access import ModelAccess
    from tl_jacobian_scopes.scopes import engine

    model = tiny_model("llama", "bridge")[0]
    assert engine.attention_kernel(ModelAccess(model)) == "sdpa"  # the SDPA path is in play
    module = model.blocks[0]
    for name in where.split("."):
        module = getattr(module, name)
    handle = module.register_forward_hook(_replace_output)
    try:
        tokens = model.to_tokens(TINY_TEXTS[1])
        with torch.no_grad():
            probs = model(tokens)[0, -1].float().softmax(-1)
        result = tjs.semantic_scope(model, tokens, internals=internals, progress=False)
        assert result.predicted == int(probs.argmax())
        assert result.predicted_prob == pytest.approx(float(probs.max()), rel=1e-4, abs=1e-6)
        if where == "attn.original_component" and not internals:
            assert engine.attention_kernel(ModelAccess(model)) == "eager"
    finally:
        handle.remove()
    assert engine.attention_kernel(ModelAccess(model)) == "sdpa"


def test_a_global_torch_module_hook_keeps_the_eager_attention():
    from tl_jacobian_scopes.models.access import ModelAccess
    from tl_jacobian_scopes.scopes import engine

    model = tiny_model("llama", "bridge")[0]
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        assert engine.attention_kernel(ModelAccess(model)) == "eager"
    finally:
        handle.remove()


@pytest.mark.parametrize("where", ["torch hook on unembed", "torch hook on the wrapped lm_head", "TL hook on unembed.hook_out",
                                   "global torch module hook"])
def test_a_hook_that_changes_the_logits_after_y_is_refused(where):
    """The scopes compute the logits from y and W_U: a hook after y would make them explain other logits.
    The self-check verifies every call while such a hook is attached (even after the model passed once)."""
    model = tiny_model("llama", "bridge")[0]
    tokens = model.to_tokens(TINY_TEXTS[1])
    tjs.semantic_scope(model, tokens, progress=False)  # the model passes once: the hook is added afterwards
    scale = lambda module, args, output: output * 3  # noqa: E731
    if where == "torch hook on unembed":
        handle = model.unembed.register_forward_hook(scale)
    elif where == "torch hook on the wrapped lm_head":
        handle = model.unembed.original_component.register_forward_hook(scale)
    elif where == "TL hook on unembed.hook_out":
        model.unembed.hook_out.add_hook(lambda act, hook: act * 3)
        handle = type("Reset", (), {"remove": lambda self: model.reset_hooks()})()
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: output * 3 if module is model.unembed.original_component else None)
    try:
        with torch.no_grad():
            probs = model(tokens)[0, -1].float().softmax(-1)
        with pytest.raises(tjs.OutputMismatchError, match="a hook that changes the logits after the unembedding"):
            result = tjs.semantic_scope(model, tokens, progress=False)
            assert result.predicted_prob == pytest.approx(float(probs.max()), rel=1e-4)  # the old code: a mismatch
    finally:
        handle.remove()
    assert tjs.semantic_scope(model, tokens, progress=False).predicted_prob == pytest.approx(
        float(torch.no_grad()(model)(tokens)[0, -1].float().softmax(-1).max()), rel=1e-4)


def test_an_observing_hook_on_the_unembedding_is_allowed_and_checked_each_call():
    """A hook that only reads the logits leaves them unchanged: the scope runs, and stays exact."""
    model = tiny_model("llama", "bridge")[0]
    tokens = model.to_tokens(TINY_TEXTS[1])
    seen = []
    handle = model.unembed.register_forward_hook(lambda module, args, output: seen.append(output.shape) and None)
    try:
        result = tjs.semantic_scope(model, tokens, progress=False)
        tjs.semantic_scope(model, tokens, progress=False)
    finally:
        handle.remove()
    assert len(seen) == 2  # one verifying forward pass per call while the hook is attached
    with torch.no_grad():
        probs = model(tokens)[0, -1].float().softmax(-1)
    assert result.predicted_prob == pytest.approx(float(probs.max()), rel=1e-4)


@pytest.mark.parametrize("root", ["bridge", "wrapped HF model"])
def test_a_hook_on_the_model_root_added_after_a_pass_is_caught(root):
    """A forward hook on the model itself edits the logits after y: checked at every call, also
    once the model has passed the self-check."""
    model = tiny_model("llama", "bridge")[0]
    tokens = model.to_tokens(TINY_TEXTS[1])
    tjs.semantic_scope(model, tokens, progress=False)  # passes: the verdict is cached
    if root == "bridge":
        handle = model.register_forward_hook(lambda module, args, output: output * 3)
    else:
        def triple(module, args, output):
            output.logits = output.logits * 3
        handle = model.original_model.register_forward_hook(triple)
    try:
        with pytest.raises(tjs.OutputMismatchError):
            tjs.semantic_scope(model, tokens, progress=False)
    finally:
        handle.remove()


@pytest.mark.parametrize("where", ["torch full backward hook", "TransformerLens bwd hook"])
def test_a_backward_hook_is_refused_since_it_changes_gradients_not_outputs(where):
    model = tiny_model("llama", "bridge")[0]
    if where == "torch full backward hook":
        handle = model.blocks[0].register_full_backward_hook(
            lambda module, grad_in, grad_out: tuple(None if g is None else g * 100 for g in grad_in))
    else:
        model.add_hook("blocks.0.hook_resid_post", lambda grad, hook: (grad * 100,), dir="bwd")
        handle = type("Reset", (), {"remove": lambda self: model.reset_hooks()})()
    try:
        with pytest.raises(tjs.ScopeError, match="backward hook"):
            tjs.semantic_scope(model, TINY_TEXTS[1], progress=False)
    finally:
        handle.remove()
    tjs.semantic_scope(model, TINY_TEXTS[1], progress=False)
