"""Every number the package writes says where it was measured."""

import importlib.metadata
import json

import torch

from tiny_models import tiny_model
from tl_jacobian_scopes.environment import describe, environment
from tl_jacobian_scopes.evaluation import faithfulness


def test_environment_names_versions_machine_and_model():
    model = tiny_model("gpt2", "bridge")[0]
    env = environment(model)
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["transformer-lens"] == importlib.metadata.version("transformer-lens")
    assert env["threads"] == torch.get_num_threads()
    assert env["model"]["backend"] == "bridge" and env["model"]["dtype"] == "float32"
    line = describe(env)
    assert f"torch {torch.__version__}" in line and "transformer-lens" in line and "bridge on cpu" in line
    json.dumps(env)  # stored in JSON summaries


def test_faithfulness_summary_records_its_environment(tmp_path):
    model = tiny_model("gpt2", "bridge")[0]
    data = tmp_path / "texts.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["the cat sat on the mat and ran to the house",
                                                                "a dog ran to the big red house in the city"]))
    summary = faithfulness.run(model, data, tmp_path / "out", n=2, methods=("random", "semantic"), ig_steps=2)
    assert summary["environment"]["packages"]["torch"] == torch.__version__
    assert "Measured with: " in (tmp_path / "out" / "texts_summary.md").read_text()
