"""Models larger than one device: placement requests are checked before loading, and every scope
stays correct when the model is split over devices.

Without GPUs the split is simulated (tests/virtual_devices.py): every tensor carries the device
it would be on and an operation mixing two devices fails as on CUDA, while the values are the
CPU's, so split scores must equal one-device scores exactly. The last tests need real GPUs and
are skipped without them.
"""

import copy

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import assert_close, tiny_hf_model, tiny_tokenizer
from tl_jacobian_scopes.models import loading, placement
from tl_jacobian_scopes.models.access import ModelAccess
from tl_jacobian_scopes.models.loading import bridge_from_hf, has_hooked_transformer, hooked_from_hf
from tl_jacobian_scopes.scopes import engine, probes
from virtual_devices import VirtualDevices, VirtualGenerator, cuda, dispatch

PROMPT = "the cat sat on the mat and the dog ran to the big red house"
TL3_ONLY = pytest.mark.skipif(not has_hooked_transformer(), reason="HookedTransformer is TransformerLens 3.x")


# ---- placement requests, checked before anything loads ------------------------------------------


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``count[0]`` CUDA GPUs; loading anything fails the test."""
    count = [0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count[0] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count[0])
    monkeypatch.setattr(loading, "load_default_hf_model", lambda **kw: pytest.fail("loaded before checking"))
    return count


@pytest.mark.parametrize("load", [tjs.load_default_model, lambda **kw: tjs.load_model("gpt2", **kw)])
@pytest.mark.parametrize("have", [0, 1])
def test_more_devices_than_the_machine_has_is_refused_naming_the_fix(gpus, load, have):
    gpus[0] = have
    with pytest.raises(tjs.DeviceError, match=f"n_devices=2 needs 2 CUDA GPUs.*has {have}: leave n_devices out"):
        load(n_devices=2)


def test_a_split_starting_past_the_first_gpu_counts_from_there(gpus):
    gpus[0] = 4
    with pytest.raises(tjs.DeviceError, match=r"cuda:3 to cuda:4.*has 4: leave n_devices out"):
        placement.check_placement("cuda:3", 2, None, "hooked")
    assert placement.check_placement("cuda:2", 2, None, "hooked") == (2, cuda(2))
    assert placement.check_placement(None, 3, None, "bridge") == (3, cuda(0))
    with pytest.raises(tjs.OptionError, match="cuda:0 to cuda:1.*device_map="):
        placement.check_placement("cuda:2", 2, None, "bridge")  # Accelerate's balanced map starts at 0


@pytest.mark.parametrize("n_devices", [0, -1, 1.5, True, "2"])
def test_n_devices_must_be_a_positive_int(gpus, n_devices):
    with pytest.raises(tjs.OptionError, match="n_devices must be a positive int"):
        tjs.load_default_model(n_devices=n_devices)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(device="cpu", n_devices=2), tjs.DeviceError, "splits the model over CUDA GPUs"),
    (dict(device="cpu", device_map="auto"), tjs.OptionError, "either device= .* or device_map="),
    (dict(n_devices=2, device_map="auto"), tjs.OptionError, "either n_devices= or device_map="),
    (dict(device_map="everywhere"), tjs.OptionError, "not an Accelerate strategy"),
    (dict(device_map={}), tjs.OptionError, "non-empty dict"),
    (dict(device_map={"model": "disk"}), tjs.DeviceError, "every weight in memory"),
    (dict(device_map={"model": 0, "lm_head": "cpu"}), tjs.DeviceError, "mixes 'cpu' with GPUs"),
    (dict(device_map={"model": 0, "lm_head": 3}), tjs.DeviceError, "'cuda:0' to 'cuda:1'"),
])
def test_malformed_or_conflicting_placement_is_refused(gpus, kwargs, error, match):
    gpus[0] = 2
    with pytest.raises(error, match=match):
        tjs.load_default_model(backend="bridge", **kwargs)


@TL3_ONLY
def test_device_map_on_a_hooked_transformer_points_to_n_devices(gpus):
    with pytest.raises(tjs.OptionError, match="HookedTransformer is split with n_devices="):
        tjs.load_default_model(backend="hooked", device_map="auto")


def test_n_devices_becomes_transformer_lens_balanced_map_over_exactly_those_gpus(gpus, monkeypatch):
    gpus[0] = 3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (1000 + int(i), 5000))
    got = placement.hf_placement_kwargs(2, None)
    assert got["device_map"] == "balanced" and got["max_memory"] == {0: 1000, 1: 1001}
    assert placement.hf_placement_kwargs(1, None) == {}
    assert placement.hf_placement_kwargs(1, {"": "cpu"}) == {"device_map": {"": "cpu"}}


@pytest.mark.parametrize("n_layers, n_devices, first", [(4, 2, 0), (5, 2, 0), (30, 4, 2), (3, 3, 1)])
def test_the_hooked_layout_is_the_pipeline_transformer_lens_forward_expects(n_layers, n_devices, first):
    """Block i where TransformerLens moves the residual stream for block i; embeddings with the
    first block; final norm and unembedding with the last."""
    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    class Cfg:
        pass

    cfg = Cfg()
    cfg.n_layers, cfg.n_devices, cfg.device = n_layers, n_devices, f"cuda:{first}"
    layout = placement.hooked_layout(n_layers, n_devices, cuda(first))
    for i in range(n_layers):
        assert layout[f"blocks.{i}"] == get_device_for_block_index(i, cfg)
    assert layout["embed"] == layout["hook_embed"] == layout["pos_embed"] == cuda(first)
    assert layout["unembed"] == layout["ln_final"] == cuda(first + n_devices - 1)
    assert {d.index for d in layout.values()} == set(range(first, first + n_devices))  # every GPU is used


def test_the_memory_guard_budget_spans_every_device_of_a_split_model(monkeypatch):
    free = {cuda(0): 10 * 2**30, cuda(1): 30 * 2**30}
    monkeypatch.delenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(engine, "available_memory", lambda device: free[device])
    monkeypatch.setattr(ModelAccess, "devices", property(lambda self: [cuda(0), cuda(1)]))
    access = ModelAccess(tiny_model_bridge())
    assert engine._budget(access) == int(0.8 * 40 * 2**30)


# ---- an all-CPU device_map loads through Accelerate for real ----------------------------------------


def test_a_device_map_reaches_from_pretrained_and_the_model_stays_where_it_was_put(default_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    asked = []
    load = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: asked.append(kw.get("device_map")) or load(*a, **kw))
    model = tjs.load_default_model(backend="bridge", device_map={"": "cpu"})
    assert asked == [{"": "cpu"}] and ModelAccess(model).devices == [torch.device("cpu")]
    split = tjs.semantic_scope(model, "The capital of France is", target=" Paris")
    one = tjs.semantic_scope(default_model, "The capital of France is", target=" Paris")
    assert_close(split.scores, one.scores, rtol=1e-4)


# ---- every scope on a model split over (simulated) devices --------------------------------------


def tiny_model_bridge():
    return bridge_from_hf(tiny_hf_model("llama"), tiny_tokenizer(), "tiny-llama", device="cpu")


CALLS = {
    "semantic": lambda m: tjs.semantic_scope(m, PROMPT, target="house", contrast="mat"),
    "fisher rank 1": lambda m: tjs.fisher_scope(m, PROMPT),
    "fisher exact": lambda m: tjs.fisher_scope(m, PROMPT, rank=None),
    "fisher samples": lambda m: tjs.fisher_scope(m, PROMPT, rank=None, samples=6, deflate=2),
    "temperature": lambda m: tjs.temperature_scope(m, PROMPT),
    "internals": lambda m: tjs.semantic_scope(m, PROMPT, target="house", internals=True),
    "fisher internals": lambda m: tjs.fisher_scope(m, PROMPT, internals=True),
    "positions all": lambda m: tjs.fisher_scope(m, PROMPT, positions="all"),
    "gradient x input": lambda m: tjs.evaluation.gradient_x_input(m, PROMPT),
    "batch": lambda m: tjs.temperature_scope(m, [PROMPT, "the dog ran"], padding_side="left"),
}


def _values(result):
    """Every number a call returned (scores, internal maps), flattened over batches and matrices."""
    if not isinstance(result, tjs.results.ScopeResult):  # a ScopeBatch (a list) or a ScopeMatrix (iterates its results)
        return [v for r in result for v in _values(r)]
    maps = (result.layer_scores, result.attn_scores, result.mlp_scores, result.head_scores)
    return [result.scores] + [m for m in maps if m is not None]


@pytest.fixture(scope="module")
def split_bridge():
    """A tiny Llama bridge split as Accelerate splits it: embedding, rotary and block 0 on cuda:0,
    block 1 and the final norm on cuda:1, the unembedding on cuda:2 (so y and W_U differ)."""
    hf, tokenizer = tiny_hf_model("llama"), tiny_tokenizer()
    one_device = bridge_from_hf(copy.deepcopy(hf), tokenizer, "tiny-llama", device="cpu")
    mode = VirtualDevices()
    with mode:
        dispatch(mode, hf, {"model.embed_tokens": cuda(0), "model.rotary_emb": cuda(0), "model.layers.0": cuda(0),
                            "model.layers.1": cuda(1), "model.norm": cuda(1), "lm_head": cuda(2)})
        split = bridge_from_hf(hf, tokenizer, "tiny-llama")
    return mode, split, one_device


@pytest.fixture(scope="module")
def split_hooked():
    """A tiny Llama HookedTransformer split by this package's n_devices placement over cuda:0-1."""
    if not has_hooked_transformer():
        pytest.skip("HookedTransformer is TransformerLens 3.x")
    hf, tokenizer = tiny_hf_model("llama"), tiny_tokenizer()
    one_device = hooked_from_hf(copy.deepcopy(hf), tokenizer, device="cpu")
    model = hooked_from_hf(hf, tokenizer, device="cpu")
    mode = VirtualDevices()
    with mode:
        placement.place_hooked(model, 2, cuda(0))
    return mode, model, one_device


@pytest.fixture
def simulated(monkeypatch):
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(2**34))  # no CUDA memory query on a CPU build
    monkeypatch.setattr(torch, "Generator", VirtualGenerator)


@pytest.mark.parametrize("backend", ["bridge", pytest.param("hooked", marks=TL3_ONLY)])
def test_the_split_is_real(request, backend, simulated):
    mode, model, _ = request.getfixturevalue(f"split_{backend}")
    last = 2 if backend == "bridge" else 1
    with mode:
        access = ModelAccess(model)
        assert access.devices == [cuda(i) for i in range(last + 1)]
        assert access.input_device == cuda(0) and access.W_U.device == cuda(last)
        tjs.semantic_scope(model, PROMPT)
    assert (cuda(0), cuda(1)) in mode.moves  # the residual stream crossed devices


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("backend", ["bridge", pytest.param("hooked", marks=TL3_ONLY)])
def test_scores_of_a_split_model_equal_one_device_scores(request, backend, call, simulated):
    mode, model, one_device = request.getfixturevalue(f"split_{backend}")
    with mode:
        split = CALLS[call](model)
    expected = CALLS[call](one_device)
    got, want = _values(split), _values(expected)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.device == torch.device("cpu")
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("site", ["layer", "head"])
def test_attribution_patching_of_a_split_model_equals_one_device(split_bridge, site, simulated):
    mode, model, one_device = split_bridge
    args = ("the cat sat on the mat", "the dog sat on the mat", "mat", "house")
    with mode:
        split = tjs.patching.attribution_patching_map(model, *args, site=site)
    torch.testing.assert_close(split.values, tjs.patching.attribution_patching_map(one_device, *args, site=site).values,
                               rtol=0, atol=0)


def test_the_time_series_forecast_leaves_a_split_bridge_to_its_own_forward_pass(split_bridge, simulated):
    """Its KV-cache shortcut rebuilds a plain HF model, which would lack Accelerate's device moves."""
    from tl_jacobian_scopes.timeseries import forecast

    mode, model, one_device = split_bridge
    with mode:
        assert forecast._hf_model(model) is None
    assert forecast._hf_model(one_device) is not None


def test_the_simulation_catches_code_that_assumes_one_device(split_bridge, simulated, monkeypatch):
    """Control: logits computed without moving y to W_U's device fail on the split model only."""
    mode, model, one_device = split_bridge

    def one_device_logits(y, W_U, b_U):
        return y.detach().float() @ W_U.float()

    monkeypatch.setattr(probes, "logits_at", one_device_logits)
    tjs.semantic_scope(one_device, PROMPT)
    with mode, pytest.raises(RuntimeError, match="same device"):
        tjs.semantic_scope(model, PROMPT)


# ---- real GPUs (skipped without them) -----------------------------------------------------------

FRANCE = "The capital of France is"
GPU_CALLS = {
    "semantic": lambda m: tjs.semantic_scope(m, FRANCE, target=" Paris", contrast=" Rome"),
    "fisher rank 1": lambda m: tjs.fisher_scope(m, FRANCE),
    "temperature": lambda m: tjs.temperature_scope(m, FRANCE),
    "internals": lambda m: tjs.semantic_scope(m, FRANCE, target=" Paris", internals=True),
    "positions all": lambda m: tjs.fisher_scope(m, FRANCE, positions="all"),
}


@pytest.fixture(scope="module")
def on_gpu():
    return tjs.load_default_model(device="cuda:0")


@pytest.fixture(scope="module")
def on_two_gpus():
    return tjs.load_default_model(n_devices=2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("call", list(GPU_CALLS))
def test_a_default_model_split_over_two_gpus_scores_as_on_one(on_gpu, on_two_gpus, call):
    split = on_two_gpus
    assert set(ModelAccess(split).devices) == {cuda(0), cuda(1)}
    for a, b in zip(_values(GPU_CALLS[call](split)), _values(GPU_CALLS[call](on_gpu))):
        assert_close(a, b, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("call", list(GPU_CALLS))
def test_gpu_scores_equal_cpu_scores(on_gpu, default_model, call):
    for a, b in zip(_values(GPU_CALLS[call](on_gpu)), _values(GPU_CALLS[call](default_model))):
        assert_close(a, b, rtol=1e-3)


def test_the_cli_splits_with_n_devices_and_names_the_fix_on_one_line(gpus, capsys):
    from tl_jacobian_scopes import cli

    assert cli.main(["the cat sat", "--scope", "semantic", "--n-devices", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: n_devices=2 needs 2 CUDA GPUs") and "\n" not in err, err


# ---- a device_map strategy that offloads what the GPUs cannot hold -------------------------------


@pytest.mark.parametrize("placed, ok", [
    ({"model.embed_tokens": 0, "model.layers": 0, "lm_head": "cpu"}, False),  # "auto": the rest on the CPU
    ({"model.embed_tokens": 0, "model.layers": 1, "lm_head": "disk"}, False),  # n_devices: the rest on disk
    ({"model": 0, "lm_head": "cuda:1"}, True),
    ({"": "cpu"}, True),
])
def test_a_model_accelerate_offloaded_is_refused_after_loading(monkeypatch, placed, ok):
    """device_map="auto"/"balanced" or n_devices= (max_memory = the GPUs' free memory) let
    Accelerate offload what does not fit; checked only for dicts given up front, the offloaded
    model reached the scopes (placeholder weights)."""
    import torch

    from tl_jacobian_scopes.models import loading

    class Loaded(torch.nn.Module):
        hf_device_map = placed

        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {})()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(loading, "load_default_hf_model", lambda **kw: (Loaded(), None))
    monkeypatch.setattr(loading, "bridge_from_hf", lambda *a, **k: "bridge")
    if ok:
        assert tjs.load_default_model(backend="bridge", device_map="auto") == "bridge"
    else:
        with pytest.raises(tjs.DeviceError, match="does not fit .*offloaded .*n_devices="):
            tjs.load_default_model(backend="bridge", device_map="auto")
