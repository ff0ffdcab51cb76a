"""The faithfulness runner on bad input and on resumes that must not mix runs."""

import importlib
import json

import pytest
import torch

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model
from tiny_models import write_prompts as _data
from tl_jacobian_scopes.errors import DataFileError, OptionError, OutputPathError, PositionError, PromptError
from tl_jacobian_scopes.evaluation import faithfulness as F
from tl_jacobian_scopes.models import loading

A = importlib.import_module("tl_jacobian_scopes.evaluation.aopc")  # the package exports a function of that name

TEXTS = ["the cat sat on the mat and the dog ran to the", "the dog ran to the big red house",
         "we love the food of the city"]
FAST = dict(methods=("random", "gxi", "fisher"), ig_steps=2)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


@pytest.fixture
def calls(monkeypatch):
    """Texts passed to evaluate_text, in order."""
    seen = []
    real = F.evaluate_text

    def counting(*args, **kwargs):
        seen.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "evaluate_text", counting)
    return seen


@pytest.fixture
def loads(tiny, monkeypatch):
    seen = []

    def fake_load_model(name=None, device=None, backend=None):
        seen.append(name)
        return tiny

    monkeypatch.setattr(loading, "load_model", fake_load_model)
    return seen


def _write(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_resume_refuses_another_file_with_the_same_name(tiny, tmp_path, calls):
    out = tmp_path / "out"
    F.run(tiny, _write(tmp_path / "a" / "set.jsonl", TEXTS[:2]), out, n=2, **FAST)
    assert len(calls) == 2
    other = _write(tmp_path / "b" / "set.jsonl", [TEXTS[2], TEXTS[1]])
    with pytest.raises(DataFileError, match="--out") as exc:
        F.run(tiny, other, out, n=2, **FAST)
    assert "delete" in str(exc.value) and "set.jsonl:1:" in str(exc.value)
    assert len(calls) == 2  # nothing computed, nothing reused


def test_resume_refuses_an_edited_file_but_resumes_an_extended_one(tiny, tmp_path, calls):
    data, out = _write(tmp_path / "set.jsonl", TEXTS[:2]), tmp_path / "out"
    F.run(tiny, data, out, n=2, **FAST)
    _write(data, TEXTS)  # a line appended: the first two records still match their texts
    summary = F.run(tiny, data, out, n=3, **FAST)
    assert calls == TEXTS and summary["n_prompts"] == 3
    _write(data, [TEXTS[0], "the dog ran to the big blue house", TEXTS[2]])  # line 2 edited
    with pytest.raises(DataFileError, match="record 1 .*not text 1"):
        F.run(tiny, data, out, n=3, **FAST)
    assert len(calls) == 3


@pytest.mark.parametrize("change", [dict(seed=1), dict(ig_steps=3), dict(methods=("random", "gxi")),
                                    "model", "dtype", "protocol"])
def test_resume_refuses_other_settings(change, tiny, tmp_path, calls, monkeypatch):
    data, out = _write(tmp_path / "set.jsonl", TEXTS[:2]), tmp_path / "out"
    F.run(tiny, data, out, n=2, **FAST)
    model = tiny
    if change == "model":
        model, change = tiny_model("gpt2", "bridge")[0], {}
    elif change == "dtype":
        model, change = tiny_model("llama", "bridge")[0].to(torch.float64), {}
    elif change == "protocol":
        monkeypatch.setattr(F, "PROTOCOL_VERSION", F.PROTOCOL_VERSION + 1)
        change = {}
    with pytest.raises(DataFileError, match="other settings") as exc:
        F.run(model, data, out, n=2, **{**FAST, **change})
    assert "--out" in str(exc.value)
    assert len(calls) == 2


def test_records_of_an_older_format_are_refused(tiny, tmp_path):
    data, out = _write(tmp_path / "set.jsonl", TEXTS[:2]), tmp_path / "out"
    out.mkdir()
    (out / "set.jsonl").write_text(json.dumps({"id": 0, "aopc": {"random": 0.0}, "deltas": {}}) + "\n")
    with pytest.raises(DataFileError, match="set.jsonl:1: .*delete"):
        F.run(tiny, data, out, n=2, **FAST)


def test_unkeyed_records_can_be_adopted_when_they_fit(tiny, tmp_path, calls):
    data, out = _write(tmp_path / "set.jsonl", TEXTS), tmp_path / "out"
    F.run(tiny, data, out, n=3, **FAST)
    records = out / "set.jsonl"
    legacy = [{k: v for k, v in json.loads(line).items() if k not in ("key", "params", "line")}
              for line in records.read_text().splitlines()]
    records.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    other = _write(tmp_path / "other" / "set.jsonl", [TEXTS[1], TEXTS[0], TEXTS[2]])  # other lengths
    with pytest.raises(DataFileError, match="another file"):
        F.adopt_unkeyed_records(tiny, other, records, **FAST)
    assert F.adopt_unkeyed_records(tiny, data, records, **FAST) == 3
    assert F.run(tiny, data, out, n=3, **FAST)["n_prompts"] == 3
    assert len(calls) == 3  # nothing recomputed


def test_texts_too_short_are_skipped_and_counted(tiny, tmp_path, calls):
    data = _write(tmp_path / "set.jsonl", [TEXTS[0], "cat", TEXTS[1], ""])
    summary = F.run(tiny, data, tmp_path / "out", n=4, **FAST)
    assert summary["n_prompts"] == 2 and summary["n_skipped"] == 2
    records = [json.loads(line) for line in (tmp_path / "out" / "set.jsonl").read_text().splitlines()]
    assert ["skipped" in r for r in records] == [False, True, False, True]
    assert "too short" in records[1]["skipped"]
    evaluated = [r["aopc"]["gxi"] for r in records if "skipped" not in r]
    assert summary["methods"]["gxi"]["aopc_mean"] == pytest.approx(sum(evaluated) / 2)
    assert "2 skipped" in F.summary_markdown(summary, "set").splitlines()[0]
    with pytest.raises(PromptError, match="too short"):
        F.evaluate_text(tiny, "cat", **FAST)

    only_short = _write(tmp_path / "short.jsonl", ["cat", "dog"])
    with pytest.raises(DataFileError, match="None of the 2 texts"):
        F.run(tiny, only_short, tmp_path / "out", n=2, **FAST)


def test_malformed_lines_report_the_file_line(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"text": "a b"}) + "\n\n" + '{"text": "c d"\n')
    with pytest.raises(DataFileError, match=f"{path}:3: not valid JSON"):
        F.read_texts(path)
    path.write_text(json.dumps({"text": "a b"}) + "\n" + json.dumps({"txt": "c"}) + "\n")
    with pytest.raises(DataFileError, match=f'{path}:2: .*"text"'):
        F.read_texts(path)
    # U+2028 inside a string is not a line break in JSONL.
    path.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n" + json.dumps({"text": "c d"}) + "\n")
    assert F.read_texts(path) == [(1, "a\u2028b"), (2, "c d")]


@pytest.mark.parametrize(
    "make, args, needle",
    [
        (lambda p: _write(p, TEXTS), ["--n", "0"], "--n"),
        (lambda p: _write(p, TEXTS), ["--n", "-1"], "--n"),
        (lambda p: _write(p, TEXTS), ["--ig-steps", "0"], "--ig-steps"),
        (lambda p: _write(p, TEXTS), ["--seed", "-1"], "--seed"),
        (lambda p: _write(p, TEXTS), ["--methods", "fishr,gxi"], "Did you mean 'fisher'"),
        (lambda p: _write(p, TEXTS), ["--methods", ","], "No methods"),
        (lambda p: p.write_text("\n\n") and p, [], "no texts"),
        (lambda p: p, [], "does not exist"),
        (lambda p: p.write_text('{"text": "a"}\n{"text": 3}\n') and p, [], "set.jsonl:2:"),
        (lambda p: p.write_text('{"text": "a"}\n\n{"text": "b\n') and p, [], "set.jsonl:3: not valid JSON"),
        (lambda p: _write(p, TEXTS), ["--out", "FILE"], "--out"),
        (lambda p: _write(p, TEXTS), ["--device", "cuda"], "cpu"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_work(make, args, needle, tmp_path, loads, calls, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = make(tmp_path / "set.jsonl")
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    assert F.main([str(data), *out, *FAST_ARGS, *args]) == 2
    _one_error_line(capsys, needle)
    assert loads == [] and calls == []


FAST_ARGS = ["--methods", "random,gxi", "--ig-steps", "2"]


def test_two_files_with_one_stem_are_refused_up_front(tmp_path, loads, calls, capsys):
    a = _write(tmp_path / "a" / "set.jsonl", TEXTS)
    b = _write(tmp_path / "b" / "set.jsonl", TEXTS[:1])
    assert F.main([str(a), str(b), "--out", str(tmp_path / "out"), *FAST_ARGS]) == 2
    _one_error_line(capsys, "set.jsonl")
    assert loads == [] and calls == []


def test_main_runs_with_a_model_object(tiny, tmp_path, capsys):
    data = _write(tmp_path / "set.jsonl", TEXTS[:2])
    assert F.main([str(data), "--n", "2", "--out", str(tmp_path / "out"), *FAST_ARGS], model=tiny) == 0
    assert "### set (n = 2)" in capsys.readouterr().out


def test_run_validates_its_arguments(tiny, tmp_path):
    data = _write(tmp_path / "set.jsonl", TEXTS)
    for kwargs in (dict(n=0), dict(n=-1), dict(ig_steps=0), dict(methods=("semantic", "fishr"))):
        with pytest.raises(OptionError):
            F.run(tiny, data, tmp_path / "out", **{**FAST, **kwargs})
    assert not (tmp_path / "out" / "set.jsonl").exists()


def test_unwritable_summary_keeps_the_records(tiny, tmp_path, calls):
    data, out = _write(tmp_path / "set.jsonl", TEXTS[:2]), tmp_path / "out"
    (out / "set_summary.json").mkdir(parents=True)
    with pytest.raises(OutputPathError, match="run the same command again"):
        F.run(tiny, data, out, n=2, **FAST)
    (out / "set_summary.json").rmdir()
    assert F.run(tiny, data, out, n=2, **FAST)["n_prompts"] == 2
    assert len(calls) == 2  # the second run reused both records


def test_plot_curves_leaves_the_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.rcParams["backend"]
    try:
        matplotlib.use("pdf")
        summary = {"n_prompts": 2, "methods": {"gxi": {"aopc_mean": -1.0, "delta_means": [-1.0, -2.0, -3.0]}}}
        F.plot_curves(summary, tmp_path / "c.png", "set")
        assert matplotlib.get_backend().lower() == "pdf"
    finally:
        matplotlib.rcParams["backend"] = before
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_deletion_needs_a_token_to_ablate(tiny):
    tokens = torch.tensor([1, 5, 7])
    with pytest.raises(PositionError, match="ablate"):
        A.deletion_deltas(tiny, tokens, 0, 3, {"r": torch.rand(3)}, has_bos=True)
    with pytest.raises(PositionError):
        A.deletion_deltas(tiny, tokens, 3, 3, {"r": torch.rand(3)}, has_bos=True)
    with pytest.raises(OptionError, match="one score per token"):
        A.deletion_deltas(tiny, tokens, 2, 3, {"r": torch.rand(4)}, has_bos=True)
    with pytest.raises(PositionError):
        A.loo_percentile(torch.rand(3), torch.rand(3), torch.arange(1, 1))
    with pytest.raises(OptionError):
        A.aopc([-1.0, -2.0])


# ---- an --out folder holding the data file -------------------------------------------------------


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
