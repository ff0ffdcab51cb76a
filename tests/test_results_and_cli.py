"""ScopeResult helpers and the command line, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result
from tiny_models import tiny_model
from tl_jacobian_scopes import cli
from tl_jacobian_scopes.cli import main
from tl_jacobian_scopes.models import loading

PROMPT = "the cat sat on the mat and the dog ran to the"


@pytest.fixture(scope="module")
def result():
    model, _ = tiny_model("gpt2", "bridge")
    return tjs.semantic_scope(model, PROMPT, target="dog", contrast="cat", position=8)


@pytest.fixture
def session_model_in_cli(default_model, monkeypatch):
    """The command line gets the session's default model instead of loading it again.

    The CLI loads through ``models.loading.load_model``; the default model (no ``--model``,
    default backend) is answered with the session's copy, anything else goes to the real loader.
    """
    real, calls = loading.load_model, []

    def load_model(name=None, device=None, backend=None):
        if name is None and backend in (None, loading.default_backend()):
            calls.append(name)
            return default_model
        return real(name, device=device, backend=backend)

    monkeypatch.setattr(loading, "load_model", load_model)
    if hasattr(cli, "load_model"):  # a module-level import of the loader
        monkeypatch.setattr(cli, "load_model", load_model)
    yield
    assert calls, "the CLI no longer loads through models.loading.load_model: update this fixture"


def test_top_is_sorted_and_consistent(result):
    top = result.top(3)
    assert [t.score for t in top] == sorted([t.score for t in top], reverse=True)
    best = int(result.scores.argmax())
    assert top[0].position == best and top[0].token == result.str_tokens[best]
    # Only the explained span (positions 0..position) is ranked (issue 22): later tokens score 0.
    assert len(result.top(100)) == result.position + 1 < result.n_tokens


def test_dataframe_and_normalized_do_not_mutate(result):
    before = result.scores.clone()
    df = result.to_dataframe()
    shares = result.normalized()
    assert torch.equal(result.scores, before)
    assert list(df.columns) == ["scope", "position", "token", "token_id", "score", "share", "rank", "explained"]
    assert len(df) == result.n_tokens and df["explained"].sum() == 1
    assert df.loc[df["rank"] == 1, "position"].item() == int(result.scores.argmax())
    assert shares.sum().item() == pytest.approx(1.0)
    assert (df.loc[df.position > 8, "score"] == 0).all()


def test_dict_round_trip(result, tmp_path):
    path = result.save_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["score_kind"] == "norm" and data["contrast_str"] == "cat"
    again = tjs.results.ScopeResult.from_dict(data)
    torch.testing.assert_close(again.scores, result.scores)
    assert again.str_tokens == result.str_tokens and again.position == result.position
    assert "semantic" in repr(result) and "'dog' vs 'cat'" in repr(result)


def test_cli_on_default_model(capsys, tmp_path, session_model_in_cli):
    out = tmp_path / "r.json"
    assert main(["The capital of France is", "--scope", "fisher", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top prediction ' Paris'" in text
    for token in ["'<|im_start|>'", "' capital'", "' France'", "<- explained"]:
        assert token in text
    data = json.loads(out.read_text())
    assert data["scope"] == "fisher" and data["predicted_str"] == " Paris" and len(data["scores"]) == 6

    assert main(["The capital of France is", "--scope", "semantic", "--target", " Paris", "--contrast", " Rome"]) == 0
    assert "vs contrast ' Rome'" in capsys.readouterr().out


def test_cli_errors_exit_2(capsys, session_model_in_cli):
    assert main(["hello", "--scope", "fischer"]) == 2
    assert "Did you mean 'fisher'" in capsys.readouterr().err
    assert main(["The capital", "--scope", "semantic", "--target", " Paris France"]) == 2
    assert "not one" in capsys.readouterr().err
    assert main(["The capital", "--scope", "fisher", "--target", " Paris"]) == 2


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "tl-jacobian-scopes"
    assert script.exists(), "pip install -e . installs the console script"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--scope" in proc.stdout


def test_cli_positions_samples_internals(capsys, tmp_path, session_model_in_cli):
    assert main(["The capital of France is", "--scope", "semantic", "--target", "next", "--positions", "3,5"]) == 0
    out = capsys.readouterr().out
    assert "at 2 positions" in out and "-> ' Paris'" in out and "-> ' France'" in out
    html = tmp_path / "v.html"
    assert main(["The capital of France is", "--scope", "fisher", "--samples", "8", "--internals", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "standard errors up to" in out and "top heads" in out and html.stat().st_size > 1_000_000


# ---- ScopeBatch slicing --------------------------------------------------------------------------


def test_a_sliced_or_copied_batch_is_still_a_batch():
    items = [make_result(), make_result(position=3), make_result(position=4)]
    batch = tjs.results.ScopeBatch(items)
    tail = batch[1:]
    assert type(tail) is tjs.results.ScopeBatch and list(tail) == items[1:]
    assert list(tail.to_dataframe().prompt_index.unique()) == [0, 1]
    assert "Jacobian" in tail.show()._repr_html_()
    assert batch[-1] is items[2] and isinstance(batch[0], tjs.results.ScopeResult)
    duplicate = batch.copy()
    assert type(duplicate) is tjs.results.ScopeBatch and duplicate == batch and duplicate is not batch
