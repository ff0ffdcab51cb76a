"""Regression tests for defects found reviewing issue 13's sweeps (tl_jacobian_scopes.sweep)."""

import json

import pytest

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
from tl_jacobian_scopes.sweep import cli


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


def _data(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- an --out folder that holds the data file ----------------------------------------------------


def test_an_out_folder_holding_the_data_file_is_refused_and_the_data_is_kept(tiny, tmp_path, capsys, monkeypatch):
    """The merged file ``<out>/<stem>.jsonl`` would be the data file itself: it was read as
    records, and the error told the user to delete their data file."""
    from tl_jacobian_scopes.models import loading

    data = _data(tmp_path / "set.jsonl", [{"text": "the cat sat"}, {"text": "the dog ran"}])
    before = data.read_bytes()
    with pytest.raises(tjs.OutputPathError, match="another --out") as info:
        tjs.run_sweep(tiny, data, tmp_path, scope="semantic")
    assert "delete" not in str(info.value)
    # The command line refuses it before the model loads.
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before checking"))
    assert cli.main([str(data), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "another --out" in err and "\n" not in err, err
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.jsonl"]


# ---- options for the whole run that would fail every prompt the same way ---------------------------


@pytest.mark.parametrize("scope, options, error, needle", [
    ("fisher", {"target": "cat"}, tjs.OptionError, "takes no target"),
    ("temperature", {"contrast": "cat"}, tjs.OptionError, "takes no contrast"),
    ("semantic", {"target": "big red"}, tjs.TargetError, "2 tokens"),
    ("semantic", {"target": 10**9}, tjs.TargetError, "outside the vocabulary"),
    ("semantic", {"target": "cat", "contrast": "cat"}, tjs.TargetError, "same token"),
    ("semantic", {"position": 1.5}, tjs.PositionError, "position must be an int"),
    ("fisher", {"positions": "all"}, tjs.OptionError, "one position per prompt"),
    ("fisher", {"progress": True}, tjs.OptionError, "progress"),
])
def test_a_bad_run_wide_option_is_an_error_not_a_skipped_record_per_prompt(tiny, tmp_path, scope, options, error,
                                                                           needle):
    """These were recorded as a "skipped" record for every prompt (kept as done, so the fix then
    met a StaleRecordsError), or raised a bare AssertionError / TypeError."""
    data = _data(tmp_path / "set.jsonl", [{"text": "the cat sat"}, {"text": "the dog ran"}])
    with pytest.raises(error, match=needle):
        tjs.run_sweep(tiny, data, tmp_path / "out", scope=scope, **options)
    assert not (tmp_path / "out" / "set.jsonl").exists()
    assert not list((tmp_path / "out").glob("set.part-*"))


def test_per_prompt_problems_are_still_skipped_records(tiny, tmp_path):
    """Control: a run-wide position that one short prompt lacks skips that prompt only."""
    data = _data(tmp_path / "set.jsonl", [{"text": "the cat sat on the mat"}, {"text": "the dog"}])
    summary = tjs.run_sweep(tiny, data, tmp_path / "out", scope="semantic", position=4, target="mat")
    assert (summary["n_records"], summary["n_skipped"]) == (2, 1)


def test_the_cli_reports_a_run_wide_target_of_two_tokens_once_and_writes_no_records(tmp_path, capsys, monkeypatch):
    from tl_jacobian_scopes.models import loading

    data = _data(tmp_path / "set.jsonl", [{"text": "the cat sat"}])
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: tiny_model("llama", "bridge")[0])
    assert cli.main([str(data), "--scope", "semantic", "--target", "big red", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "2 tokens" in err and "\n" not in err, err
    assert not (tmp_path / "out" / "set.jsonl").exists()


def test_the_faithfulness_runner_refuses_an_out_folder_holding_its_data_file(tiny, tmp_path, capsys):
    """Its records file ``<out>/<stem>.jsonl`` is the data file too: the error told the user to
    delete it (or to "adopt" it, which rewrites it)."""
    from tl_jacobian_scopes.evaluation import faithfulness

    data = _data(tmp_path / "set.jsonl", [{"text": "the cat sat on the mat and the dog ran to the big red house"}])
    before = data.read_bytes()
    with pytest.raises(tjs.OutputPathError, match="another --out") as info:
        faithfulness.run(tiny, data, tmp_path, n=1, methods=["semantic"], ig_steps=2)
    assert "delete" not in str(info.value)
    assert faithfulness.main([str(data), "--out", str(tmp_path), "--methods", "semantic"], model=tiny) == 2
    assert "another --out" in capsys.readouterr().err
    assert data.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["set.jsonl"]


# ---- a device_map strategy that offloads what the GPUs cannot hold ----------------------------------


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
