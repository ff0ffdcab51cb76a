"""Sweeps: sharding, merging, resuming, and torchrun runs that must equal one process's.

The ``torchrun`` tests launch ``python -m torch.distributed.run --standalone --nproc_per_node 2``
(CPU, gloo, one thread per process) on a tiny random model (tests/sweep_worker.py) and on the
default model; the references run in this process with one thread, through the same command.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import TINY_TEXTS, read_records, tiny_model, write_prompts
from tiny_models import write_prompts as _data
from tl_jacobian_scopes.errors import DataFileError, OptionError, StaleRecordsError
from tl_jacobian_scopes.sweep import Item, Layout, merge, pending, shard
from tl_jacobian_scopes.sweep import cli
from tl_jacobian_scopes.sweep.distributed import environment_ranks, local_device
from tl_jacobian_scopes.sweep.prompts import read_prompts
from tl_jacobian_scopes.sweep.runner import LineCounter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


@pytest.fixture
def one_thread():
    """torchrun gives each process one thread: the in-process reference uses one too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _torchrun(args, env_extra=None, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# ---- sharding and merging (no model) -----------------------------------------------------------


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2), (2, 3), (3, 2)])
def test_shares_cover_the_todo_once_across_a_change_of_world_size(first, second):
    items = [Item(i, f"k{i}", None) for i in (5, 0, 3, 1, 4, 2, 6, 7, 8)]
    todo = pending(items, {"k3"})
    assert [it.id for it in todo] == [0, 1, 2, 4, 5, 6, 7, 8]
    shares = [shard(todo, r, first) for r in range(first)]
    assert sorted(it.id for s in shares for it in s) == [it.id for it in todo]  # each exactly once
    # The first run dies after each rank did its first record; a restart with another world size.
    done = {"k3"} | {s[0].key for s in shares if s}
    left = pending(items, done)
    again = [shard(left, r, second) for r in range(second)]
    redone = sorted(it.id for s in again for it in s)
    assert redone == [it.id for it in left] and not done & {it.key for s in again for it in s}
    assert len(redone) + len(done) == len(items)
    with pytest.raises(ValueError):
        shard(todo, 2, 2)


def test_merge_sorts_deduplicates_drops_cut_lines_and_removes_the_parts(tmp_path):
    layout = Layout(tmp_path, "set")
    rec = {i: {"id": i, "key": f"k{i}", "value": i * 1.5} for i in range(6)}
    write_prompts(layout.merged, [rec[0], rec[3]])
    write_prompts(layout.part(0, 2), [rec[4], rec[1]])
    write_prompts(layout.part(1, 2), [rec[5], rec[3]])  # 3 again: a record in two files is kept once
    with layout.part(1, 2).open("a") as fh:
        fh.write('{"id": 2, "key": "k2", "val')  # a rank killed mid-write
    write_prompts(layout.part(0, 1), [rec[2]])  # a part of a run with another world size
    (tmp_path / "set.part-x-of-2.jsonl").write_text("not a part file")
    (tmp_path / "other.part-0-of-1.jsonl").write_text(json.dumps(rec[1]) + "\n")
    assert len(layout.parts()) == 3 and layout.parts(2) == [layout.part(0, 2), layout.part(1, 2)]
    merged = merge(layout)
    assert merged == [rec[i] for i in range(6)]
    assert read_records(layout.merged) == merged
    assert layout.parts() == [] and (tmp_path / "other.part-0-of-1.jsonl").exists()
    assert merge(layout) == merged  # idempotent


def test_a_malformed_records_line_names_the_file_and_line(tmp_path):
    layout = Layout(tmp_path, "set")
    layout.part(0, 1).write_text('{"id": 0, "key": "a"}\nnot json\n')
    with pytest.raises(DataFileError, match=r"set\.part-0-of-1\.jsonl:2: .*delete"):
        merge(layout)


def test_the_line_counter_counts_only_lines_added_since_it_started(tmp_path):
    layout = Layout(tmp_path, "set")
    write_prompts(layout.part(0, 2), [{"id": 0, "key": "a"}])
    counter = LineCounter(lambda: layout.parts(2))
    assert counter.count() == 0
    with layout.part(0, 2).open("a") as fh:
        fh.write('{"id": 1, "key": "b"}\n{"id": 2, "ke')
    write_prompts(layout.part(1, 2), [{"id": 3, "key": "c"}, {"id": 4, "key": "d"}])
    assert counter.count() == 3
    # Its writer cuts the cut-short line off, then appends a record shorter than it was.
    raw = layout.part(0, 2).read_bytes()
    layout.part(0, 2).write_bytes(raw[: raw.rfind(b"\n") + 1] + b'{"id": 5}\n')
    assert counter.count() == 4


def test_ranks_and_devices_come_from_torchruns_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (environment_ranks().rank, environment_ranks().world) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = environment_ranks()
    assert (ranks.rank, ranks.world, ranks.local_rank, ranks.main) == (3, 4, 1, False)
    assert local_device("cuda") == torch.device("cuda", 1) and local_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device(None) == torch.device("cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(OptionError, match="torchrun"):
        environment_ranks()


def test_prompt_fields_are_checked_with_their_line(tmp_path):
    path = write_prompts(tmp_path / "set.jsonl", [{"text": "a b", "target": " x", "position": -1}, {"text": "c", "target": 1.5}])
    with pytest.raises(DataFileError, match=r"set\.jsonl:2: \"target\""):
        read_prompts(path)
    write_prompts(path, [{"text": "a b", "position": "last"}])
    with pytest.raises(DataFileError, match=r"set\.jsonl:1: \"position\""):
        read_prompts(path)
    write_prompts(path, [{"text": "a b", "target": " x", "position": -1, "note": 3}])
    assert read_prompts(path)[0].inputs() == {"text": "a b", "target": " x", "contrast": None, "position": -1}


# ---- one process, tiny model -------------------------------------------------------------------


def test_records_hold_the_scope_and_skip_prompts_that_cannot_be_explained(tiny, tmp_path):
    data = write_prompts(tmp_path / "set.jsonl", [TINY_TEXTS[0], {"text": TINY_TEXTS[1], "target": "house", "position": 3},
                                           {"text": "the cat", "position": 9}, {"text": "the cat", "target": "big red"},
                                           TINY_TEXTS[0]])
    summary = tjs.run_sweep(tiny, data, tmp_path / "out", scope="semantic")
    records = read_records(tmp_path / "out" / "set.jsonl")
    assert [r["id"] for r in records] == [0, 1, 2, 3, 4] and [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert summary["n_records"] == 5 and summary["n_skipped"] == 2
    assert records[4]["scores"] == records[0]["scores"]  # a repeated text gets its own record
    assert "skipped" in records[2] and "skipped" in records[3] and "position" in records[2]["skipped"].lower()
    direct = tjs.semantic_scope(tiny, TINY_TEXTS[1], target="house", position=3, progress=False)
    assert records[1]["scores"] == direct.scores.tolist() and records[1]["tokens"] == direct.str_tokens
    assert records[1]["target"]["token"] == "house" and records[1]["position"] == 3
    assert records[1]["prediction"]["token"] == direct.predicted_str
    assert len({r["key"] for r in records}) == 5 and not Layout(tmp_path / "out", "set").parts()
    assert json.loads((tmp_path / "out" / "set_summary.json").read_text())["n_records"] == 5


def test_other_settings_or_another_data_file_are_refused(tiny, tmp_path, capsys):
    data, out = write_prompts(tmp_path / "set.jsonl", TINY_TEXTS[:3]), tmp_path / "out"
    assert cli.main([str(data), "--scope", "fisher", "--out", str(out)], model=tiny) == 0
    capsys.readouterr()
    assert cli.main([str(data), "--scope", "fisher", "--rank", "2", "--out", str(out)], model=tiny) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other settings" in err and "--out" in err and "'rank': 1" in err
    with pytest.raises(StaleRecordsError, match="other settings .*scope='fisher' \\(now 'temperature'\\)"):
        tjs.run_sweep(tiny, data, out, scope="temperature")
    write_prompts(data, [TINY_TEXTS[1], TINY_TEXTS[0], TINY_TEXTS[2]])
    with pytest.raises(StaleRecordsError, match="record 0 .*not text 0 .*delete"):
        tjs.run_sweep(tiny, data, out, scope="fisher", rank=1)
    write_prompts(data, [*TINY_TEXTS[:3], TINY_TEXTS[3]])  # extended: resumes, computes one
    assert tjs.run_sweep(tiny, data, out, scope="fisher", rank=1)["n_computed"] == 1
    smaller = tjs.run_sweep(tiny, data, out, scope="fisher", rank=1, limit=1)  # a smaller run's summary
    written = json.loads((out / "set_summary.json").read_text())
    assert smaller["n_records"] == written["n_records"] == 1 and written["n_records_in_file"] == 4
    write_prompts(data, [{"text": TINY_TEXTS[0], "target": "cat"}])
    with pytest.raises(OptionError, match="set.jsonl:1: the temperature scope takes no target"):
        tjs.run_sweep(tiny, data, tmp_path / "out2", scope="temperature")


# ---- torchrun ----------------------------------------------------------------------------------


@pytest.mark.torchrun
def test_torchrun_kill_and_resume_with_other_world_sizes_equals_one_process(tiny, tmp_path, one_thread, capsys):
    data = write_prompts(tmp_path / "set.jsonl", [*TINY_TEXTS, {"text": "the", "position": 4}])
    args = [str(data), "--scope", "semantic", "--out"]
    assert cli.main([*args, str(tmp_path / "ref")], model=tiny) == 0
    reference = read_records(tmp_path / "ref" / "set.jsonl")
    assert len(reference) == 8 and sum("skipped" in r for r in reference) == 1

    out = tmp_path / "out"
    assert cli.main([*args, str(out), "--limit", "2"], model=tiny) == 0  # world 1 does ids 0, 1
    capsys.readouterr()
    # World 2 resumes ids 2..7: rank 0 takes 2, 4, 6; rank 1 takes 3, 5, 7 and dies after its first.
    run = _torchrun(["tests/sweep_worker.py", "llama", *args, str(out)],
                    {"TJS_SWEEP_DIE_AFTER": "1", "TJS_SWEEP_DIE_RANK": "1"})
    assert run.returncode != 0, run.stdout + run.stderr
    layout = Layout(out, "set")
    assert [r["id"] for r in read_records(layout.merged)] == [0, 1]  # no merge after a death
    part0, part1 = layout.part(0, 2), layout.part(1, 2)
    assert [r["id"] for r in read_records(part1)] == [3]
    ids0 = [r["id"] for r in read_records(part0)] if part0.exists() else []
    assert set(ids0) <= {2, 4, 6}
    with part0.open("a") as fh:  # as if rank 0 had been killed mid-write too
        fh.write('{"id": 4, "key": "')

    # Resume on one process: computes exactly what is missing.
    assert cli.main([*args, str(out)], model=tiny) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_computed"] == 8 - 2 - 1 - len(ids0) and summary["world_size"] == 1
    assert read_records(layout.merged) == reference and layout.parts() == []


@pytest.mark.torchrun
def test_torchrun_on_the_default_model_equals_one_process(default_model, tmp_path, one_thread, capsys):
    rows = ["She opened the old wooden box and found a letter from her grandmother, written in faded ink",
            "The train left the station at noon, and by evening the passengers could see the mountains",
            {"text": "The capital of France is", "target": " Paris"}]
    data = write_prompts(tmp_path / "set.jsonl", rows)
    args = [str(data), "--scope", "semantic", "--out"]
    assert cli.main([*args, str(tmp_path / "one")], model=default_model) == 0
    reference = read_records(tmp_path / "one" / "set.jsonl")
    run = _torchrun(["-m", "tl_jacobian_scopes.sweep", *args, str(tmp_path / "two"), "--device", "cpu"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_records(tmp_path / "two" / "set.jsonl") == reference
    assert run.stdout.count('"world_size": 2') == 1 and run.stdout.count('"world_size"') == 1  # rank 0 prints
    assert reference[2]["target"]["token"] == " Paris" and reference[2]["tokens"][-1] == " is"


@pytest.mark.parametrize("args, needle", [
    (["--scope", "fishr"], "Did you mean 'fisher'"),
    (["--limit", "0"], "--limit"),
    (["--scope", "fisher", "--target", " x"], "--scope semantic"),
    (["--scope", "fisher", "--rank", "0"], "--rank"),
    (["--scope", "temperature", "TARGETS"], "takes no target"),
    (["MISSING"], "does not exist"),
    (["--out", "FILE"], "--out"),
])
def test_bad_input_is_one_line_exit_2_before_the_model_loads(args, needle, tmp_path, monkeypatch, capsys):
    from tl_jacobian_scopes.models import loading

    loads = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a))
    data = write_prompts(tmp_path / "set.jsonl", [{"text": "a b", "target": " c"}] if "TARGETS" in args else ["a b"])
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args if a != "TARGETS"]
    first = str(tmp_path / "missing.jsonl") if "MISSING" in args else str(data)
    args = [a for a in args if a != "MISSING"]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    assert cli.main([first, *out, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert loads == []


# ---- an --out folder holding the data file; options for the whole run ----------------------------


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
