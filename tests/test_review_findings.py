"""Defects found by a hostile review of the one-driver refactor (each test fails on that code).

Every test names the defect it pins; the review report gives the cause and a suggested fix.
"""

import numpy as np
import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
from tl_jacobian_scopes.errors import ScopeError
from tl_jacobian_scopes.models import hook_count

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", "bridge")[0]


# ---- state not restored ----------------------------------------------------------------------


def test_bridge_wrapped_hf_model_keeps_its_training_flag(model):
    """frozen() calls model.eval(), which TransformerBridge propagates to ``original_model``
    (kept outside the registered module tree), but restores only ``model.modules()``: the
    wrapped HF model is left in eval mode after every scope."""
    hf = model.original_model
    model.train()
    try:
        before = [m.training for m in hf.modules()]
        assert all(before)
        tjs.semantic_scope(model, PROMPT)
        assert [m.training for m in hf.modules()] == before
    finally:
        model.eval()


# ---- wrong numbers (silently) ----------------------------------------------------------------


def test_padded_batch_from_to_tokens_does_not_explain_a_pad_token(model):
    """``model.to_tokens([...])`` pads short prompts; the driver explains each row's last
    column, i.e. a pad token, with no warning. It must either explain the real last token
    (as the single-prompt call does) or refuse with a ScopeError naming the fix."""
    tokens = model.to_tokens([PROMPT, "a dog"])
    pad = model.tokenizer.pad_token_id
    assert int(tokens[1, -1]) == pad  # the short row is right-padded
    single = tjs.semantic_scope(model, "a dog")
    try:
        results = tjs.semantic_scope(model, tokens)
    except ScopeError:
        return
    assert results[1].position == single.position
    assert torch.allclose(results[1].scores[: len(single.scores)], single.scores, rtol=1e-4, atol=1e-6)


# ---- crashes with unclear errors -------------------------------------------------------------


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


def test_list_of_numpy_ints_is_one_prompt(model):
    """``list(np_array)`` holds np.int64, which is_batch() does not count as ints: the list is
    taken as a batch of one-token "prompts" and refused with "Cannot read a prompt of type
    int64: pass a string or token ids" although token ids were passed."""
    ids = model.to_tokens(PROMPT)[0]
    expected = tjs.semantic_scope(model, ids)
    got = tjs.semantic_scope(model, list(ids.numpy()))
    assert isinstance(got, tjs.ScopeResult)
    assert torch.allclose(got.scores, expected.scores)


def test_numpy_2d_array_is_a_batch(model):
    """A ``[batch, pos]`` numpy array is refused as 'one prompt of shape (2, n)' while the
    same tensor is a batch."""
    ids = model.to_tokens(PROMPT)[0].numpy()
    got = tjs.semantic_scope(model, np.stack([ids, ids]))
    assert isinstance(got, list) and len(got) == 2


@pytest.mark.parametrize("positions", [np.array([1, 2]), [np.int64(1), np.int64(2)]])
def test_numpy_positions(model, positions):
    """``positions=np.arange(...)`` is refused with a misleading hint ('for one position pass
    position=array([1, 2])'); a list of np.int64 with 'position must be an int, got int64'."""
    matrix = tjs.semantic_scope(model, PROMPT, positions=positions)
    assert [r.position for r in matrix.results] == [1, 2]


def test_numpy_int_position_and_target(model):
    """np.int64 (e.g. from np.argmax) is refused as a position and as a target id."""
    expected = tjs.semantic_scope(model, PROMPT, position=3, target=5)
    got = tjs.semantic_scope(model, PROMPT, position=np.int64(3), target=np.int64(5))
    assert torch.allclose(got.scores, expected.scores)


def test_prompt_on_the_meta_device_gives_a_scope_error(model):
    """A token tensor on another device that cannot be read ('meta') escapes as a plain
    RuntimeError ('Tensor.item() cannot be called on meta tensors')."""
    ids = model.to_tokens(PROMPT)[0].to("meta")
    with pytest.raises(ScopeError):
        tjs.semantic_scope(model, ids)


# ---- error messages that do not name the fix ------------------------------------------------


def test_misspelt_common_argument_is_hinted(model):
    """``postion=2`` says 'semantic has no option 'postion'; its options are none.': the
    common arguments are left out of the close-match hint."""
    with pytest.raises(ScopeError, match="position"):
        tjs.semantic_scope(model, PROMPT, postion=2)


def test_prepend_bos_that_is_not_a_bool_is_refused(model):
    """``prepend_bos="no"`` is truthy: BOS is silently prepended (the scores change)."""
    with pytest.raises(ScopeError, match="prepend_bos"):
        tjs.semantic_scope(model, PROMPT, prepend_bos="no")


def test_contrast_equal_to_the_next_token_names_the_next_token(model):
    """With target="next", a contrast equal to the next token is refused with 'contrast
    equals the default target (the model's top prediction): pass target=.', which names
    neither the real cause nor a fix (the user did pass target=)."""
    ids = model.to_tokens(PROMPT)[0]
    with pytest.raises(ScopeError) as info:
        tjs.semantic_scope(model, ids, position=1, target="next", contrast=int(ids[2]))
    assert "top prediction" not in str(info.value)


def test_model_loaded_under_inference_mode_is_refused_and_left_as_it_was():
    """Parameters made under torch.inference_mode() are inference tensors: the forward pass
    fails with a plain RuntimeError, then frozen()'s own restoration raises ('Setting
    requires_grad=True on inference tensor outside InferenceMode'), which skips the rest of
    the restoration: every parameter is left with requires_grad=False and every module in
    eval mode."""
    with torch.inference_mode():
        model = tiny_model("llama", "bridge")[0]
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    with pytest.raises(ScopeError, match="inference_mode"):
        tjs.semantic_scope(model, PROMPT)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("name", ["gradient_x_input", "integrated_gradients", "path_semantic_scope"])
def test_every_public_method_pickles(name):
    """semantic_scope and leave_one_out pickle, but the methods whose strategy is a closure
    (vjp_strategy's lambda, _path's inner function) do not: they cannot be sent to worker
    processes (multiprocessing, joblib) as the refactor's predecessors, plain functions, could."""
    import pickle

    scope = getattr(tjs, name)
    assert pickle.loads(pickle.dumps(scope)).method.name == scope.method.name


def test_processed_weights_warning_points_at_the_callers_line():
    """_semantic warns with stacklevel=4, which lands on Scope.__call__ in scopes/api.py
    (one frame short since the driver refactor): every warning reports api.py:105, so the
    default filter shows it once per session whatever the call site, and a filter on the
    user's module cannot match it."""
    import warnings

    from tl_jacobian_scopes.errors import ProcessedWeightsWarning

    model = tiny_model("llama", "bridge")[0]
    with torch.no_grad():
        head = model.original_model.lm_head.weight
        head -= head.mean(dim=0, keepdim=True)  # center_unembed=True, by hand
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tjs.semantic_scope(model, PROMPT)
    found = [w for w in caught if issubclass(w.category, ProcessedWeightsWarning)]
    assert found, "the centered W_U should be reported"
    assert found[0].filename == __file__


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
