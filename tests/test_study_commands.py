"""Study and benchmark commands, safe defaults: they never write into committed results by
default, refuse to replace a summary made from more records (naming the fix), say what the
records they leave out are, and find the shipped LAMBADA sample from any folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.evaluation import faithfulness
from tl_jacobian_scopes.timeseries import study
from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_default_output_folders_are_not_committed_results() -> None:
    for module in (faithfulness, study):
        source = Path(module.__file__).read_text(encoding="utf-8")
        assert 'default="benchmarks/results' not in source
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert 'default="benchmarks/results' not in script.read_text(encoding="utf-8"), script.name


def test_shipped_lambada_names_its_source() -> None:
    texts = tjs.data.lambada()
    assert len(texts) == 1000 and all(isinstance(t, str) and t for t in texts)
    assert tjs.data.lambada_path().is_file()
    assert "CC BY 4.0" in tjs.data.SOURCES["lambada"] and "Paperno" in tjs.data.SOURCES["lambada"]
    assert faithfulness.resolve_data("lambada") == str(tjs.data.lambada_path())
    with pytest.raises(tjs.DataFileError, match="CC BY-NC-ND 3.0: not shipped"):
        tjs.data.iwslt_path("no-such-iwslt.jsonl")


def test_faithfulness_refuses_to_shrink_a_summary(tmp_path, capsys) -> None:
    model, _ = tiny_model("gpt2", "bridge")
    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on the mat {i}"}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    out.mkdir()
    summary = out / "set_summary.json"
    summary.write_text(json.dumps({"n_prompts": 300, "n_skipped": 0, "methods": {}}))
    before = summary.read_text()
    status = faithfulness.main([str(data), "--n", "2", "--out", str(out), "--methods", "random"], model=model)
    err = capsys.readouterr().err
    assert status == 2
    assert "summarizes 300 records" in err and "a summary of 2" in err and "another --out" in err
    assert summary.read_text() == before
    assert not (out / "set.jsonl").exists()  # refused before computing anything


def _ts_record(family: str, seed: int) -> dict:
    return {"id": 0, "key": f"k-{family}-{seed}", "family": family, "seed": seed, "inputs": {}, "result": {}}


def test_timeseries_resume_message_tells_other_seeds_apart(tmp_path, capsys) -> None:
    out = tmp_path / "ts"
    out.mkdir()
    (out / "records.jsonl").write_text(json.dumps(_ts_record("lorenz", 7)) + "\n")
    assert study.main(["--seeds", "1", "--families", "lorenz", "--out", str(out), "--summary-only"]) == 0
    err = capsys.readouterr().err
    assert "seeds or families this run does not ask for" in err
    assert "other inputs" not in err and "other parameters" not in err


def test_timeseries_refuses_to_shrink_a_summary(tmp_path, capsys) -> None:
    out = tmp_path / "ts"
    out.mkdir()
    saved = {"meta": {}, "summary": {"lorenz": {"n_seeds": 20}, "brownian": {"n_seeds": 20}}}
    (out / "summary.json").write_text(json.dumps(saved))
    assert study.main(["--seeds", "1", "--out", str(out), "--summary-only"]) == 2
    err = capsys.readouterr().err
    assert "summarizes 40 records" in err and "another --out" in err
    assert json.loads((out / "summary.json").read_text()) == saved


def test_speed_quick_has_no_raw_file_error(tmp_path) -> None:
    """--quick from another folder: no FileNotFoundError traceback (the prompt set ships)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    source = (ROOT / "benchmarks" / "speed.py").read_text(encoding="utf-8")
    assert "shared/data" not in source
