"""Notebook habits and hostile use: grad modes, threads, failures, non-finite weights, odd inputs.

Every scope and baseline must run under a global no-grad mode, survive concurrent calls on one
model, let real errors through, refuse what it cannot explain, and leave the model exactly as it
was: each module's train/eval flag, each parameter's requires_grad, hooks, and grad mode.
"""

import threading
import warnings

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
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
        tjs.gradient_x_input(model, PROMPT, internals=True)
    with pytest.raises(tjs.TargetError, match="no contrast"):
        tjs.gradient_x_input(model, PROMPT, target="dog", contrast="cat")


@pytest.mark.parametrize("method", ["semantic", "fisher", "gxi", "random", "loo"])
def test_output_shape_is_decided_by_the_call_not_by_sub_batches(model, method):
    """A [3, pos] tensor with batch_size=2 is a batch of three (the last sub-batch holds one
    prompt); with positions= it gives three ScopeMatrix objects, never a flattened mix."""
    tokens = torch.stack([model.to_tokens(t)[0] for t in ("the cat sat", "a dog ran", "the sun is")])
    results = tjs.jacobian_scope(model, tokens, method, batch_size=2)
    assert isinstance(results, list) and len(results) == 3
    assert all(isinstance(r, tjs.ScopeResult) for r in results)
    matrices = tjs.jacobian_scope(model, tokens, method, batch_size=2, positions=[1, 2])
    assert isinstance(matrices, list) and len(matrices) == 3
    assert all(isinstance(m, tjs.ScopeMatrix) and m.positions == [1, 2] for m in matrices)
    whole = tjs.jacobian_scope(model, tokens, method, batch_size=3, positions=[1, 2])
    for a, b in zip(matrices, whole):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-6)


def test_baselines_take_the_scopes_arguments(model):
    """Baselines run through the same driver: positions=, batches and target='next' work and
    agree with one-by-one calls."""
    text = "a dog ran to the big red house"
    matrix = tjs.gradient_x_input(model, text, target="next", positions=[2, 4])
    for pos, row in zip([2, 4], matrix):
        single = tjs.gradient_x_input(model, text, target=int(model.to_tokens(text)[0, pos + 1]), position=pos)
        torch.testing.assert_close(row.scores, single.scores, rtol=1e-4, atol=1e-6)
    loo = tjs.leave_one_out(model, [text, PROMPT], position=[3, -1])
    assert [r.position for r in loo] == [3, loo[1].n_tokens - 1]
    assert float(loo[0].scores[4:].abs().sum()) == 0.0  # causality
    torch.testing.assert_close(loo[1].scores, tjs.leave_one_out(model, PROMPT).scores, rtol=1e-4, atol=1e-7)


def test_a_forward_pass_that_skips_the_unembedding_hook_is_a_clear_error():
    model = tiny_model("gpt2", "bridge", seed=7)[0]
    model.forward = lambda *args, **kwargs: torch.zeros(1)  # never reaches unembed.hook_in
    with pytest.raises(tjs.MissingHookError, match="never reached 'unembed.hook_in'"):
        tjs.semantic_scope(model, PROMPT)
