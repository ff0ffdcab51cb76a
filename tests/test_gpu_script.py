"""benchmarks/gpu.py (issue 24): refuses without a GPU, and every section's code runs in its dry run.

No GPU is lent to this project's sessions: the dry run runs each section on the CPU, on a
2-layer random proxy at short lengths, so that the GPU run does not fail on a code path no one
ran. Its numbers mean nothing and are not checked; the files and their fields are.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu

        yield gpu
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the script would run")
def test_without_a_gpu_it_refuses_with_a_message(gpu_script, capsys, tmp_path):
    assert gpu_script.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--dry-run" in err
    assert list(tmp_path.iterdir()) == []


def test_the_dry_run_runs_every_section_and_writes_its_files(gpu_script, tmp_path):
    assert gpu_script.main(["--dry-run", "--out", str(tmp_path)]) == 0
    files = {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert set(files) == {f"{name}_dryrun.json" for name in ("speed", "launch_bound", "batch", "long_context", "gpu_tests")}
    for data in files.values():
        assert data["environment"]["dry_run"] is True and data["environment"]["packages"]
    speed = files["speed_dryrun.json"]
    for key in ("tokens_16", "tokens_32"):
        for scope in ("semantic", "temperature", "fisher rank 1"):
            assert math.isfinite(speed[key][scope]["ours_over_floor"]) and speed[key][scope]["ours_over_floor"] > 0
    proxy = files["launch_bound_dryrun.json"]["proxy"][0]
    assert proxy["layers"] == 2 and proxy["rows"]["ours semantic, bridge"]["calls"]["python"] > 0
    assert files["batch_dryrun.json"]["semantic"]["batch_speedup"] > 0
    assert {r["scope"] for r in files["long_context_dryrun.json"]["rows"]} == {"semantic", "fisher rank 1"}
    tests = files["gpu_tests_dryrun.json"]
    assert tests["returncode"] == 0 and "collected" in tests["summary"], tests["tail"]


def test_launch_bound_goals_say_pass_fail_or_not_measured(gpu_script):
    import launch_bound as lb

    rows = {f"ours {s}, bridge": {"over_floor": v} for s, v in
            [("semantic", 1.05), ("temperature", 1.2), ("fisher rank 1", 1.3)]}
    results = {"proxy": [{"width": 72, "backends": ["bridge"], "rows": rows}],
               "real": {"tokens_64": {"semantic": {"ours_over_original": 0.8}, "temperature": {}},
                        "overhead_64_ms": {"semantic": {"overhead": 4.0}, "temperature": {"overhead": 6.0}}}}
    verdicts = {g["goal"]: g["pass"] for g in lb.goals(results)}
    assert verdicts["proxy (width 72), bridge: semantic <= 1.1x the HF floor"] is True
    assert verdicts["proxy (width 72), bridge: temperature <= 1.1x the HF floor"] is False
    assert verdicts["proxy (width 72), bridge: fisher rank 1 <= 1.3x the HF floor"] is True
    assert verdicts["real model, 64 tokens: semantic <= 0.9x the authors' code"] is True
    assert verdicts["real model, 64 tokens: temperature <= 0.9x the authors' code"] is None  # not measured
    assert verdicts["real model, 256 tokens: semantic <= 0.9x the authors' code"] is None
    assert verdicts["real model, 64 tokens: semantic per-call overhead <= 5.0 ms CPU"] is True
    assert verdicts["real model, 64 tokens: temperature per-call overhead <= 5.0 ms CPU"] is False
