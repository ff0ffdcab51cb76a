"""A result carries its score kind: set from the method's declaration when the scope runs, written
by ``save_json`` and read back by ``load``, so that a custom method's result loaded in a fresh
process (where the method is not registered) keeps its kind instead of becoming ``"norm"``."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.errors import DataFileError
from tl_jacobian_scopes.scopes.api import SCOPES, Scope, register
from tl_jacobian_scopes.scopes.declarations import FISHER
from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", "bridge")[0]


@pytest.fixture
def custom_scope():
    """A custom method (Fisher's strategy under a new name, declared "quadratic"), registered here only."""
    method = dataclasses.replace(FISHER, name="my_curvature", label="My curvature")
    scope = register(Scope(method, "my_curvature_scope", "A custom quadratic scope (test)."))
    yield scope
    SCOPES.pop("my_curvature", None)


def test_a_scope_sets_the_kind_of_its_method(model) -> None:
    assert tjs.fisher_scope(model, "the cat sat on the", progress=False).score_kind == "quadratic"
    assert tjs.semantic_scope(model, "the cat sat on the", progress=False).score_kind == "norm"


def test_custom_method_result_keeps_its_kind_in_a_fresh_process(model, custom_scope, tmp_path) -> None:
    result = custom_scope(model, "the cat sat on the", progress=False)
    assert result.scope == "my_curvature" and result.score_kind == "quadratic"
    path = result.save_json(tmp_path / "r.json")
    assert json.loads(Path(path).read_text())["score_kind"] == "quadratic"
    # A fresh interpreter has never heard of "my_curvature": the kind must come from the file.
    code = ("import sys, tl_jacobian_scopes as tjs; r = tjs.load(sys.argv[1]); "
            "assert 'my_curvature' not in tjs.SCOPES; print(r.scope, r.score_kind)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["my_curvature", "quadratic"], out.stderr
    # And in this process, load gives back an equal result with the same kind.
    again = tjs.load(path)
    assert again == result and again.score_kind == "quadratic"


def test_quadratic_kind_changes_how_a_loaded_result_aggregates(model, custom_scope, tmp_path) -> None:
    """The kind is not a label only: quadratic scores add, norm scores combine as a root-sum-of-squares."""
    result = tjs.load(custom_scope(model, "the cat sat on the", progress=False).save_json(tmp_path / "r.json"))
    values = result.scores[:3]
    assert float(result.aggregate(values)) == pytest.approx(float(values.sum()), rel=1e-5)
    as_norm = dataclasses.replace(result, score_kind="norm")
    assert float(as_norm.aggregate(values)) == pytest.approx(float(values.pow(2).sum().sqrt()), rel=1e-5)


def test_an_unknown_kind_is_refused_in_a_file_and_in_code(model, tmp_path) -> None:
    result = tjs.semantic_scope(model, "the cat sat on the", progress=False)
    data = result.to_dict()
    data["score_kind"] = "loud"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataFileError, match="score_kind"):
        tjs.load(tmp_path / "bad.json")
    with pytest.raises(tjs.OptionError, match="score_kind"):
        dataclasses.replace(result, score_kind="loud")


def test_a_matrix_of_two_score_kinds_is_refused_in_code_and_in_a_file(tmp_path) -> None:
    """Now that each row carries its kind, a matrix could mix two: its views would put them on
    one colour scale and its ``score_kind`` would be the first row's."""
    from tl_jacobian_scopes.results import ScopeMatrix
    from scope_fixtures import make_result

    rows = [make_result(position=p, scope="fisher") for p in (3, 4)]
    with pytest.raises(tjs.ScopeError, match=r"one score kind .*\['norm', 'quadratic'\]"):
        ScopeMatrix([rows[0], dataclasses.replace(rows[1], score_kind="norm")])
    data = ScopeMatrix(rows).to_dict()
    data["results"][1]["score_kind"] = "norm"  # each row alone is a valid file
    (tmp_path / "mixed.json").write_text(json.dumps(data))
    with pytest.raises(DataFileError, match="one score kind"):
        tjs.load(tmp_path / "mixed.json")
    assert tjs.load(ScopeMatrix(rows).save_json(tmp_path / "ok.json")).score_kind == "quadratic"


def _without_stored_kind(result):
    """The result as an earlier version pickled it: score_kind was a property, not in ``__dict__``."""
    old = copy.copy(result)
    del old.__dict__["score_kind"]
    return old


def test_a_pickle_from_before_the_kind_was_stored_takes_its_methods_kind() -> None:
    """Unpickled, such a result read the class default "norm": a Fisher result's quadratic scores became norms."""
    from scope_fixtures import make_result

    for scope, kind in (("fisher", "quadratic"), ("semantic", "norm"), ("loo", "kl"), ("never-registered", "norm")):
        old = pickle.dumps(_without_stored_kind(make_result(scope=scope, score_kind=kind)))
        assert pickle.loads(old).score_kind == kind, scope
    fisher = pickle.loads(pickle.dumps(_without_stored_kind(make_result(scope="fisher", score_kind="quadratic"))))
    values = fisher.scores[:3]
    assert float(fisher.aggregate(values)) == pytest.approx(float(values.sum()))


def test_a_pickle_keeps_the_kind_it_stores() -> None:
    from scope_fixtures import make_result

    stored = make_result(scope="fisher", score_kind="norm")  # stored wins over the declaration
    assert pickle.loads(pickle.dumps(stored)).score_kind == "norm"


def test_a_dict_without_a_kind_takes_its_methods_kind(tmp_path) -> None:
    """A dict written by hand (or another tool) without score_kind: Fisher's is quadratic, not "norm"."""
    from scope_fixtures import result_dict

    for scope, kind in (("fisher", "quadratic"), ("temperature", "norm"), ("my_own", "norm")):
        data = result_dict(("a", " b", " c"), scope=scope)
        del data["score_kind"]
        (tmp_path / "r.json").write_text(json.dumps(data))
        assert tjs.load(tmp_path / "r.json").score_kind == kind, scope
