"""Issue 21 (hardening, round 3): regression tests, each failing on the code before the fix.

Sweep: one sweep per folder (an OS lock, released when its process dies), a full disk is
one line and exit code 2 with every record kept. The other groups (memory guard, ids,
time series, result files, hooks on wrapped modules) follow below.
"""

import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import TINY_TEXTS, read_records, tiny_model, write_prompts
from tl_jacobian_scopes.sweep import Layout, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


# ---- the sweep: one per folder -----------------------------------------------------------------


def test_a_second_sweep_into_the_folder_is_refused_and_the_first_loses_nothing(tiny, tmp_path, monkeypatch, capsys):
    """Sweep B starts (and would merge) while sweep A is still appending: B is refused, A keeps all."""
    from tl_jacobian_scopes.sweep import jobs

    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS), tmp_path / "out"
    explain = jobs.explain_prompt
    second = []

    def explain_and_start_b(model, scope, prompt, options):
        if prompt.id == 2 and not second:  # A is half-way: B starts on the same folder
            second.append(None)
            second[0] = cli.main([str(data), "--scope", "semantic", "--out", str(out), "--limit", "2"], model=tiny)
        return explain(model, scope, prompt, options)

    monkeypatch.setattr(jobs, "explain_prompt", explain_and_start_b)
    assert cli.main([str(data), "--scope", "semantic", "--out", str(out)], model=tiny) == 0
    err = capsys.readouterr().err
    assert second == [2]
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "Another sweep is writing to" in line and f"pid {os.getpid()}" in line and "started 20" in line
    assert "another --out folder" in line
    assert [r["id"] for r in read_records(out / "set.jsonl")] == list(range(len(TINY_TEXTS)))
    assert not Layout(out, "set").parts()


def test_a_lock_held_by_another_process_is_named_and_released_when_it_dies(tiny, tmp_path, capsys):
    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS[:2]), tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from tl_jacobian_scopes.sweep.lock import try_lock; "
         "assert try_lock(Path(sys.argv[1])) is None; print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main([str(data), "--scope", "semantic", "--out", str(out)], model=tiny) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on host " in err and "started 20" in err and len(err.strip().splitlines()) == 1
        assert not (out / "set.jsonl").exists()
        with pytest.raises(tjs.FolderLockedError, match=f"pid {holder.pid}"):
            tjs.run_sweep(tiny, data, out, scope="semantic")
    finally:
        holder.kill()  # as kill -9: the OS releases the lock; its file stays, stale
        holder.wait()
    assert cli.main([str(data), "--scope", "semantic", "--out", str(out)], model=tiny) == 0
    assert len(read_records(out / "set.jsonl")) == 2


def test_merge_keeps_a_part_file_that_grows_while_it_is_read(tmp_path, monkeypatch):
    from tl_jacobian_scopes.sweep import records

    layout = Layout(tmp_path, "set")
    layout.part(0, 1).write_text(json.dumps({"id": 0, "key": "a"}) + "\n")
    load = records.load_done

    def load_then_append(*args, **kwargs):
        done = load(*args, **kwargs)
        with layout.part(0, 1).open("a") as fh:  # a writer outside the lock appends meanwhile
            fh.write(json.dumps({"id": 1, "key": "b"}) + "\n")
        return done

    monkeypatch.setattr(records, "load_done", load_then_append)
    assert [r["id"] for r in records.merge(layout)] == [0]
    monkeypatch.setattr(records, "load_done", load)
    assert [r["id"] for r in records.merge(layout)] == [0, 1]  # kept, merged next time
    assert not layout.parts()


# ---- the sweep: a full disk ---------------------------------------------------------------------


class _FullDisk:
    """A file whose ``fail_at``-th write writes a few bytes, then fails with ENOSPC."""

    def __init__(self, fh, fail_at, counter):
        self._fh, self._fail_at, self._counter = fh, fail_at, counter

    def write(self, data):
        self._counter[0] += 1
        if self._counter[0] >= self._fail_at:
            self._fh.write(data[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._fh.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._fh.close()
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _fill_disk_on(monkeypatch, suffix, fail_at):
    opened = pathlib.Path.open
    counter = [0]

    def open_(self, mode="r", *args, **kwargs):
        fh = opened(self, mode, *args, **kwargs)
        return _FullDisk(fh, fail_at, counter) if self.name.endswith(suffix) and mode[0] in "aw" else fh

    monkeypatch.setattr(pathlib.Path, "open", open_)


@pytest.mark.parametrize("where, suffix, fail_at", [("append", "-of-1.jsonl", 4), ("merge", ".jsonl.merging", 2)])
def test_a_full_disk_is_one_line_exit_2_and_every_record_is_kept(tiny, tmp_path, monkeypatch, capsys,
                                                                   where, suffix, fail_at):
    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS), tmp_path / "out"
    args = [str(data), "--scope", "semantic", "--out"]
    assert cli.main([*args, str(tmp_path / "ref")], model=tiny) == 0
    reference = read_records(tmp_path / "ref" / "set.jsonl")
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _fill_disk_on(patch, suffix, fail_at)
        assert cli.main([*args, str(out)], model=tiny) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "No space left on device" in err
    assert "run the same command again" in err
    assert not list(out.glob("*.merging"))  # no partial merged copy left
    layout = Layout(out, "set")
    kept = [r for p in layout.files() for r in read_records(p)]  # every file ends with a whole line
    if where == "append":
        assert sorted(r["id"] for r in kept) == [0, 1, 2] and not layout.merged.exists()
    else:
        assert sorted(r["id"] for r in kept) == list(range(len(TINY_TEXTS))) and len(layout.parts()) == 1
    assert cli.main([*args, str(out)], model=tiny) == 0
    assert read_records(layout.merged) == reference and not layout.parts()


@pytest.mark.torchrun
def test_torchrun_ranks_share_the_lock_and_a_locked_folder_stops_every_rank(tmp_path):
    from tl_jacobian_scopes.sweep.lock import folder_lock

    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS[:4]), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tests/sweep_worker.py", "llama", str(data), "--scope", "semantic", "--out", str(out)]
    out.mkdir()
    with folder_lock(out):  # this process's sweep holds the folder: both ranks stop, none hangs
        run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode != 0 and run.stderr.count(f"Another sweep is writing to {out}: pid {os.getpid()}") == 2
    assert not list(out.glob("set*.jsonl"))
    # A job that gets the lock shares it over its ranks: test_sweep.py's torchrun runs (rank 1 appends).


# ---- the memory guard counts every option that scales the probes -------------------------------


@pytest.fixture
def no_probe_making(monkeypatch):
    """Making Fisher probes raises: a call the guard lets through never allocates them here."""
    from tl_jacobian_scopes.scopes import probes

    def refuse(*args, **kwargs):
        raise RuntimeError("the probes were being made: the guard let the call through")

    monkeypatch.setattr(probes, "fisher_sample_probes", refuse)
    monkeypatch.setattr(probes, "fisher_matrix", refuse)


def test_200000_fisher_samples_are_refused_by_the_guard_before_any_allocation(default_model, monkeypatch,
                                                                               no_probe_making):
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(16 * 2**30))
    with pytest.raises(tjs.ScopeMemoryError, match=r"probe vectors .*samples=200000.*1[45]\d\.\d GiB.*samples="):
        tjs.fisher_scope(default_model, "The capital of France is", rank=None, samples=200_000, progress=False)


def test_exact_fisher_at_every_position_is_counted(default_model, monkeypatch, no_probe_making):
    """rank=None is d_model probes per position; positions='all' multiplies them (and their VJP groups)."""
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(4 * 2**30))
    prompt = " ".join(["word"] * 60)
    with pytest.raises(tjs.ScopeMemoryError, match=r"576 per prediction, 6\d predictions at once.*positions="):
        tjs.fisher_scope(default_model, prompt, rank=None, positions="all", progress=False)


def test_the_batch_size_and_samples_enter_the_guard(tiny, monkeypatch):
    from tl_jacobian_scopes.scopes import engine

    prompts, samples = TINY_TEXTS[:4], 4000
    access = tjs.scopes.driver.ModelAccess(tiny)
    making = 16 * samples * access.d_vocab  # the Rademacher draws of one prediction
    one, four = (engine.probes_memory(access, samples + 8, n, 1, making) for n in (1, 4))
    assert four > 2 * one
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", str(engine.scope_memory(access, 10) + (one + four) // 2))
    with pytest.raises(tjs.ScopeMemoryError, match="4 predictions at once.*batch_size="):
        tjs.fisher_scope(tiny, prompts, rank=None, samples=samples, progress=False)
    results = tjs.fisher_scope(tiny, prompts[:2], rank=None, samples=samples, batch_size=1, progress=False)
    assert len(results) == 2 and all(torch.isfinite(r.scores).all() for r in results)


# ---- result files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_internals(tiny):
    return tjs.semantic_scope(tiny, TINY_TEXTS[0], internals=True, progress=False).to_dict()


@pytest.mark.parametrize("rows", [1, 2])
def test_internal_norms_whose_shape_differs_from_their_map_are_refused(saved_internals, rows):
    data = json.loads(json.dumps(saved_internals))
    assert len(data["internal_norms"]["layer"]) == 3  # tiny: 2 layers + final
    data["internal_norms"]["layer"] = data["internal_norms"]["layer"][:rows]  # 1 row would broadcast silently
    with pytest.raises(tjs.DataFileError, match=r"internal_norms\.layer.*shape of 'layer_scores' \(3, "):
        tjs.ScopeResult.from_dict(data)
    assert tjs.ScopeResult.from_dict(json.loads(json.dumps(saved_internals))).has_internals  # the real file loads


@pytest.mark.parametrize("field, value", [("scores", 10**400), ("target_prob", -(10**400)), ("scores", "1.5"),
                                          ("scores", True), ("tokens", 1.5), ("tokens", 2.0)],
                         ids=["400-digit-score", "400-digit-prob", "string-score", "bool-score", "float-id", "2.0-id"])
def test_numbers_a_file_cannot_hold_are_refused(saved_internals, tmp_path, field, value):
    data = json.loads(json.dumps(saved_internals))
    if isinstance(data[field], list):
        data[field][1] = value
    else:
        data[field] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(tjs.DataFileError, match=field):
        tjs.load(path)


def test_a_400_digit_logit_difference_in_a_patching_file_is_refused(tmp_path):
    values = torch.ones(2, 3)
    result = tjs.PatchingResult(values=values, metric="restored", method="activation patching", site="head",
                                row_labels=["L0", "L1"], col_labels=["H0", "H1", "H2"], clean_str_tokens=["a"],
                                corrupted_str_tokens=["b"], answer_str="cat", wrong_str="dog", ld_clean=2.0,
                                ld_corrupted=-1.0, model_name="m")
    data = result.to_dict()
    data["ld_clean"] = 10**400
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(tjs.DataFileError, match="ld_clean"):
        tjs.load(tmp_path / "p.json")


def test_save_json_of_deeply_nested_params_is_a_clear_error(tiny, tmp_path):
    result = tjs.semantic_scope(tiny, TINY_TEXTS[0], progress=False)
    deep: dict = {}
    for _ in range(900):
        deep = {"x": deep}
    result.params["deep"] = deep
    with pytest.raises(tjs.OutputPathError, match="nested too deeply.*flatten"):
        result.save_json(tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_the_html_view_of_deeply_nested_params_is_bounded(tiny, tmp_path):
    result = tjs.semantic_scope(tiny, TINY_TEXTS[0], progress=False)
    deep: dict = {}
    for _ in range(3000):
        deep = {"x": deep}
    result.params.update(deep=deep, big=list(range(10**5)))
    page = result.save_html(tmp_path / "r.html").read_text()
    assert "deep={&#x27;x&#x27;: {" in page and "99999" not in page


def test_patching_plot_draws_a_loaded_mathtext_row_label_literally(tmp_path):
    import io

    values = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    result = tjs.PatchingResult(values=values, metric="restored", method="activation patching", site="head",
                                row_labels=["L0", "$\\frac{$"], col_labels=["H0", "H1", "H2"], clean_str_tokens=["a"],
                                corrupted_str_tokens=["b"], answer_str="cat", wrong_str="dog", ld_clean=2.0,
                                ld_corrupted=-1.0, model_name="m")
    result.save_json(tmp_path / "p.json")
    fig = tjs.load(tmp_path / "p.json").plot()
    fig.savefig(io.BytesIO(), format="png")  # mathtext would raise on "$\frac{$"
    assert "$\\frac{$" in [t.get_text() for t in fig.axes[0].get_yticklabels()]


# ---- ids are integers --------------------------------------------------------------------------


@pytest.mark.parametrize("target", [torch.tensor(1.5), torch.tensor(1.0), torch.tensor(True), torch.tensor([2.5])])
def test_a_non_integral_target_id_is_refused(tiny, target):
    with pytest.raises(tjs.TargetError, match="integer"):
        tjs.semantic_scope(tiny, TINY_TEXTS[0], target=target, progress=False)


# ---- time series ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ts_model():
    from test_timeseries import _tiny

    return _tiny("digits", "bridge")[0]


@pytest.mark.parametrize("series", [[1e308, -1e308, 0.0, 1e308], [0.0, 5e-324, 0.0, 5e-324], [1.0, 1.0 + 1e-15, 1.0]],
                         ids=["wider-than-float64", "subnormal", "below-resolution"])
def test_serialize_refuses_a_range_that_cannot_be_rescaled(series):
    from tl_jacobian_scopes import timeseries as ts

    with pytest.raises(tjs.PromptError, match="cannot be rescaled.*rescale it yourself"):
        ts.serialize(series)
    s = ts.serialize([1e300, -1e300, 0.0])  # a wide range that float64 can rescale still works
    assert list(s.values) == [85, 15, 50] and abs(s.decode(85) - 1e300) < 1e286


@pytest.mark.parametrize("options, needle", [({"min_step": 0, "steps": "all"}, "min_step"),
                                             ({"min_step": -5, "steps": "all"}, "min_step"),
                                             ({"min_step": 1.5, "steps": "all"}, "min_step"),
                                             ({"steps": [1.5]}, "steps"), ({"steps": [2.0]}, "steps"),
                                             ({"steps": [True]}, "steps")])
def test_min_step_and_steps_are_validated_before_any_work(ts_model, monkeypatch, options, needle):
    from tl_jacobian_scopes import timeseries as ts
    from tl_jacobian_scopes.timeseries import forecast

    def no_work(*args, **kwargs):
        raise AssertionError("the scope ran before the options were checked")

    monkeypatch.setattr(forecast, "resolve_scope", no_work)
    with pytest.raises(tjs.OptionError, match=needle):
        ts.forecast_scope(ts_model, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], distribution=False, **options)


def test_a_long_series_is_checked_against_the_context_before_mapping_its_tokens(ts_model, monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from tl_jacobian_scopes import timeseries as ts
    from tl_jacobian_scopes.timeseries import forecast

    calls = []
    spy = SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    for name in ("flatnonzero", "searchsorted"):  # the per-token mapping (old and new)
        setattr(spy, name, lambda *a, _f=getattr(np, name), **k: calls.append(1) or _f(*a, **k))
    monkeypatch.setattr(forecast, "np", spy)
    with pytest.raises(tjs.PromptError, match="context of 128"):
        ts.forecast_scope(ts_model, list(range(2000)) * 3)
    assert calls == []


# ---- torch hooks on the bridge's wrapped modules ---------------------------------------------------


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


def test_integration_steps_are_bounded_before_any_work():
    model = tiny_model("llama", "bridge")[0]
    for steps in (10**10, 2**63):
        with pytest.raises(tjs.OptionError, match="steps"):
            tjs.integrated_gradients(model, TINY_TEXTS[1], steps=steps, progress=False)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "1e400", "0", "-1"])
def test_a_bad_memory_budget_variable_is_a_clear_error(monkeypatch, value):
    model = tiny_model("llama", "bridge")[0]
    monkeypatch.setenv("TL_JACOBIAN_SCOPES_MEMORY_BUDGET", value)
    with pytest.raises(tjs.ScopeError, match="TL_JACOBIAN_SCOPES_MEMORY_BUDGET"):
        tjs.semantic_scope(model, TINY_TEXTS[1], progress=False)


# ---- second red-team round ------------------------------------------------------------------------


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


def test_numpy_and_tensor_integer_options_are_plain_ints():
    np = pytest.importorskip("numpy")
    model = tiny_model("llama", "bridge")[0]
    a = tjs.fisher_scope(model, TINY_TEXTS[1], rank=None, samples=4, seed=np.int64(3), progress=False)
    b = tjs.fisher_scope(model, TINY_TEXTS[1], rank=None, samples=4, seed=3, progress=False)
    assert torch.equal(a.scores, b.scores) and type(a.params["seed"]) is int
    r = tjs.random_attribution(model, TINY_TEXTS[1], seed=torch.tensor(1), progress=False)
    assert torch.equal(r.scores, tjs.random_attribution(model, TINY_TEXTS[1], seed=1, progress=False).scores)


def test_serialize_refuses_unreadable_numbers_and_keeps_constant_series():
    from tl_jacobian_scopes.timeseries.serialize import serialize

    with pytest.raises(tjs.PromptError, match="float64"):
        serialize([10**400, 0])
    for value in (1e17, 1e308, -5.0, 2.5e-300, 0.0):  # written alike, decoded back to the value
        s = serialize([value] * 3)
        assert s.text == "15,15,15,"
        assert s.decode(s.values) == pytest.approx([value] * 3, rel=1e-12)


@pytest.mark.parametrize("edit", [("predicted_prob", 1.5), ("predicted_prob", -0.5), ("target_prob", 2.0)])
def test_a_loaded_result_refuses_impossible_probabilities(tmp_path, edit):
    """(Non-finite scores round-trip on purpose: test_result_files.py.)"""
    model = tiny_model("llama", "bridge")[0]
    path = tjs.semantic_scope(model, TINY_TEXTS[1], progress=False).save_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    field, value = edit
    if field == "scores":
        text = json.dumps({**data, "scores": [0.0] + data["scores"][1:]}).replace('"scores": [0.0', f'"scores": [{value}', 1)
    else:
        text = json.dumps({**data, field: value})
    path.write_text(text)
    with pytest.raises(tjs.DataFileError):
        tjs.load(path)


def test_a_loaded_result_with_deeply_nested_params_renders(tmp_path):
    model = tiny_model("llama", "bridge")[0]
    path = tjs.semantic_scope(model, TINY_TEXTS[1], progress=False).save_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    deep: list = []
    for _ in range(900):
        deep = [deep]
    data["params"]["deep"] = deep
    path.write_text(json.dumps(data))
    html = tjs.load(path).save_html(tmp_path / "r.html").read_text()
    assert "deep=[[[[…]]]]" in html
