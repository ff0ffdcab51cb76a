"""Notebook habits and hostile use: grad modes, threads, failures, non-finite weights, odd inputs.

Every scope and baseline must run under a global no-grad mode, survive concurrent calls on one
model, let real errors through, refuse what it cannot explain, and leave the model exactly as it
was: each module's train/eval flag, each parameter's requires_grad, hooks, and grad mode.
"""

import threading
import warnings

import numpy as np
import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import TINY_TEXTS, tiny_model
from tl_jacobian_scopes.errors import ScopeError
from tl_jacobian_scopes.models import hook_count

PROMPT = "the cat sat on the mat"
METHODS = ["semantic", "temperature", "fisher", "gxi", "ig", "path_semantic", "random", "loo"]
FAST = {"ig": dict(steps=2), "path_semantic": dict(steps=2)}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", "bridge")[0]


def _state(model):
    return (
        [(name, m.training) for name, m in model.named_modules()],
        [p.requires_grad for p in model.parameters()],
        hook_count(model),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
    )


@pytest.mark.parametrize("mode", ["set_grad_enabled", "no_grad", "inference_mode"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_under_a_global_no_grad_mode(model, method, mode):
    reference = tjs.jacobian_scope(model, PROMPT, method, **FAST.get(method, {}))
    context = {"set_grad_enabled": lambda: torch.set_grad_enabled(False), "no_grad": torch.no_grad,
               "inference_mode": torch.inference_mode}[mode]
    with context():
        before = _state(model)
        tokens = model.to_tokens(PROMPT)  # made under the mode, as a notebook cell would
        got = tjs.jacobian_scope(model, tokens, method, **FAST.get(method, {}))
        assert _state(model) == before
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(got.scores, reference.scores, rtol=1e-4, atol=1e-6)


def test_mixed_per_module_train_flags_are_restored(model):
    model.train()
    model.blocks[0].eval()  # a user's deliberate mix: must survive the call
    before = _state(model)
    tjs.fisher_scope(model, PROMPT)
    with pytest.raises(tjs.PositionError):
        tjs.fisher_scope(model, PROMPT, position=99)
    assert _state(model) == before
    model.eval()


def test_concurrent_calls_on_one_model_are_serialized_and_restore_state():
    model = tiny_model("llama", "bridge", seed=3)[0]
    for p in list(model.parameters())[::2]:
        p.requires_grad_(False)  # a user's mixed flags: a race would make them permanent
    before = _state(model)
    expected = {m: tjs.jacobian_scope(model, PROMPT, m).scores for m in ("semantic", "fisher")}
    errors, results = [], []

    def work(method):
        try:
            for _ in range(5):
                results.append((method, tjs.jacobian_scope(model, PROMPT, method).scores))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in ("semantic", "fisher") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 30
    for method, scores in results:
        torch.testing.assert_close(scores, expected[method])
    assert _state(model) == before


def test_a_failing_backward_propagates_and_switches_nothing_off(model):
    """An error inside the batched backward pass (here a user's tensor hook) reaches the caller
    as it is; it must not silently disable batched VJPs for later calls."""

    def plant(act, hook):
        if act.requires_grad:
            act.register_hook(lambda grad: (_ for _ in ()).throw(RuntimeError("user hook failed")))
        return act

    before = _state(model)
    with pytest.raises(RuntimeError, match="user hook failed"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", plant)]):
            tjs.fisher_scope(model, PROMPT, rank=4)
    assert _state(model) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to per-probe backward would warn
        tjs.fisher_scope(model, PROMPT, rank=4)


def test_out_of_memory_in_backward_is_not_swallowed(model, monkeypatch):
    real_grad = torch.autograd.grad

    def oom(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", oom)
    with pytest.raises(torch.OutOfMemoryError):
        tjs.fisher_scope(model, PROMPT, rank=4)


def test_non_finite_weights_are_refused_naming_the_parameter():
    model = tiny_model("llama", "bridge", seed=5)[0]
    name, param = next((n, p) for n, p in model.named_parameters() if "mlp" in n)
    with torch.no_grad():
        param[0, 0] = float("nan")
    before = _state(model)
    for method in ("semantic", "fisher", "random"):
        with pytest.raises(tjs.NonFiniteError, match="NaN or infinity"):
            tjs.jacobian_scope(model, PROMPT, method)
    assert _state(model) == before


BAD = [
    (dict(prompt=b"the cat"), tjs.PromptError, "bytes"),
    (dict(prompt="the cat \ud800"), tjs.PromptError, "not valid Unicode"),
    (dict(positions=5), tjs.PositionError, "position=5"),
    (dict(positions="every"), tjs.PositionError, "'all'"),
    (dict(seed="abc"), tjs.OptionError, "seed"),
    (dict(seed=-1), tjs.OptionError, "seed"),
    (dict(padding_side="middle"), tjs.OptionError, "padding_side"),
    (dict(rnak=2), tjs.OptionError, "Did you mean 'rank'"),
    (dict(batch_size=0), tjs.OptionError, "batch_size"),
    (dict(internals="yes"), tjs.OptionError, "internals"),
    (dict(target="dog"), tjs.TargetError, "top prediction"),
]


@pytest.mark.parametrize("kwargs,error,fragment", BAD, ids=[str(list(b[0])[0]) + str(i) for i, b in enumerate(BAD)])
def test_odd_inputs_are_refused_before_any_forward_pass(model, kwargs, error, fragment):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", PROMPT)
    calls = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        with pytest.raises(error, match=fragment):
            tjs.fisher_scope(model, prompt, **kwargs)
    assert calls == []


def test_a_list_target_for_one_prompt_says_what_a_list_means(model):
    with pytest.raises(tjs.TargetError, match="one token for one prompt"):
        tjs.semantic_scope(model, PROMPT, target=["dog"])


def test_arguments_a_method_does_not_take_are_refused(model):
    with pytest.raises(tjs.TargetError, match="takes no target"):
        tjs.temperature_scope(model, PROMPT, target="dog")
    with pytest.raises(tjs.OptionError, match="no internal maps"):
        tjs.evaluation.gradient_x_input(model, PROMPT, internals=True)
    with pytest.raises(tjs.TargetError, match="no contrast"):
        tjs.evaluation.gradient_x_input(model, PROMPT, target="dog", contrast="cat")


@pytest.mark.parametrize("method", ["semantic", "fisher", "gxi", "random", "loo"])
def test_output_shape_is_decided_by_the_call_not_by_sub_batches(model, method):
    """A [3, pos] tensor with batch_size=2 is a batch of three (the last sub-batch holds one
    prompt); with positions= it gives three ScopeMatrix objects, never a flattened mix."""
    tokens = torch.stack([model.to_tokens(t)[0] for t in ("the cat sat", "a dog ran", "the sun is")])
    results = tjs.jacobian_scope(model, tokens, method, batch_size=2)
    assert isinstance(results, list) and len(results) == 3
    assert all(isinstance(r, tjs.results.ScopeResult) for r in results)
    matrices = tjs.jacobian_scope(model, tokens, method, batch_size=2, positions=[1, 2])
    assert isinstance(matrices, list) and len(matrices) == 3
    assert all(isinstance(m, tjs.results.ScopeMatrix) and m.positions == [1, 2] for m in matrices)
    whole = tjs.jacobian_scope(model, tokens, method, batch_size=3, positions=[1, 2])
    for a, b in zip(matrices, whole):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-6)


def test_baselines_take_the_scopes_arguments(model):
    """Baselines run through the same driver: positions=, batches and target='next' work and
    agree with one-by-one calls."""
    text = "a dog ran to the big red house"
    matrix = tjs.evaluation.gradient_x_input(model, text, target="next", positions=[2, 4])
    for pos, row in zip([2, 4], matrix):
        single = tjs.evaluation.gradient_x_input(model, text, target=int(model.to_tokens(text)[0, pos + 1]), position=pos)
        torch.testing.assert_close(row.scores, single.scores, rtol=1e-4, atol=1e-6)
    loo = tjs.evaluation.leave_one_out(model, [text, PROMPT], position=[3, -1])
    assert [r.position for r in loo] == [3, loo[1].n_tokens - 1]
    assert float(loo[0].scores[4:].abs().sum()) == 0.0  # causality
    torch.testing.assert_close(loo[1].scores, tjs.evaluation.leave_one_out(model, PROMPT).scores, rtol=1e-4, atol=1e-7)


def test_a_forward_pass_that_skips_the_unembedding_hook_is_a_clear_error():
    model = tiny_model("gpt2", "bridge", seed=7)[0]
    model.forward = lambda *args, **kwargs: torch.zeros(1)  # never reaches unembed.hook_in
    with pytest.raises(tjs.MissingHookError, match="never reached 'unembed.hook_in'"):
        tjs.semantic_scope(model, PROMPT)


# ---- the wrapped model's training flag; a model made under inference_mode ------------------------


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


# ---- padded batches, numpy prompts and positions, meta tensors -----------------------------------


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


def test_list_of_numpy_ints_is_one_prompt(model):
    """``list(np_array)`` holds np.int64, which is_batch() does not count as ints: the list is
    taken as a batch of one-token "prompts" and refused with "Cannot read a prompt of type
    int64: pass a string or token ids" although token ids were passed."""
    ids = model.to_tokens(PROMPT)[0]
    expected = tjs.semantic_scope(model, ids)
    got = tjs.semantic_scope(model, list(ids.numpy()))
    assert isinstance(got, tjs.results.ScopeResult)
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


# ---- numpy and tensor integer options ------------------------------------------------------------


def test_numpy_and_tensor_integer_options_are_plain_ints():
    np = pytest.importorskip("numpy")
    model = tiny_model("llama", "bridge")[0]
    a = tjs.fisher_scope(model, TINY_TEXTS[1], rank=None, samples=4, seed=np.int64(3), progress=False)
    b = tjs.fisher_scope(model, TINY_TEXTS[1], rank=None, samples=4, seed=3, progress=False)
    assert torch.equal(a.scores, b.scores) and type(a.params["seed"]) is int
    r = tjs.evaluation.random_attribution(model, TINY_TEXTS[1], seed=torch.tensor(1), progress=False)
    assert torch.equal(r.scores, tjs.evaluation.random_attribution(model, TINY_TEXTS[1], seed=1, progress=False).scores)


# ---- error messages that name the fix ------------------------------------------------------------


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


# ---- methods pickle; warnings point at the caller ------------------------------------------------


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
