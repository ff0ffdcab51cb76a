"""Result files are standard JSON; bad input to results and views raises ScopeError subclasses."""

import json
import math

import pandas as pd
import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result, result_dict
from tl_jacobian_scopes.errors import DataFileError, OptionError, OutputPathError, PositionError, ScopeError
from tl_jacobian_scopes.views import show

NAN, INF = float("nan"), float("inf")


def _strict_loads(text):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _non_finite_result():
    r = make_result(params={"y_norm": NAN, "bounds": [INF, 1.5, -INF], "rank": 4}, target_prob=NAN)
    r.scores[1], r.scores[2] = NAN, INF
    r.stderr = torch.tensor([0.1, NAN, -INF, 0.2, 0.3, 0.4])
    r.head_scores[0, 1, 2] = NAN
    return r


def test_json_is_strict_and_round_trips_non_finite_values(tmp_path):
    r = _non_finite_result()
    text = r.save_json(tmp_path / "r.json").read_text(encoding="utf-8")
    data = _strict_loads(text)  # no NaN / Infinity tokens anywhere
    assert data["scores"][1] is None and data["scores"][2] is None and data["params"]["y_norm"] is None
    assert data["params"]["bounds"] == [None, 1.5, None] and data["target_prob"] is None
    json.dumps(r.to_dict(), allow_nan=False)  # to_dict itself is strict-JSON ready

    again = tjs.ScopeResult.load_json(tmp_path / "r.json")
    finite = torch.isfinite(r.scores)
    assert torch.isnan(again.scores[~finite]).all()  # None reads back as NaN where a float is expected
    torch.testing.assert_close(again.scores[finite], r.scores[finite])
    assert torch.isnan(again.stderr[[1, 2]]).all() and again.stderr[0].item() == pytest.approx(0.1)
    assert math.isnan(again.head_scores[0, 1, 2]) and again.head_scores[1, 2, 3] == r.head_scores[1, 2, 3]
    assert math.isnan(again.target_prob) and again.params["rank"] == 4 and again.params["y_norm"] is None
    assert again.str_tokens == r.str_tokens and again.position == r.position
    torch.testing.assert_close(again.internal("head", "scaled")[1], r.internal("head", "scaled")[1])


def test_files_written_by_older_versions_with_nan_still_load(tmp_path):
    path = tmp_path / "old.json"
    data = result_dict(["a", "b", "c"], stderr=[0.1, NAN, 0.2])
    path.write_text(json.dumps(data))  # allow_nan=True: the old format
    assert "NaN" in path.read_text()
    assert torch.isnan(tjs.ScopeResult.load_json(path).stderr[1])


def test_scope_matrix_json_round_trip(tmp_path):
    rows = [make_result(position=p) for p in (2, 5)]
    rows[0].scores[0] = NAN
    matrix = tjs.ScopeMatrix(rows)
    data = _strict_loads(matrix.save_json(tmp_path / "m.json").read_text(encoding="utf-8"))
    assert data["kind"] == "ScopeMatrix" and data["format"] == "tl_jacobian_scopes" and len(data["results"]) == 2
    again = tjs.ScopeMatrix.load_json(tmp_path / "m.json")
    assert again.positions == [2, 5] and again.str_tokens == matrix.str_tokens
    torch.testing.assert_close(again.scores, matrix.scores, equal_nan=True)
    assert tjs.ScopeMatrix.from_dict(matrix.to_dict()).targets == matrix.targets
    with pytest.raises(DataFileError, match="ScopeResult.load_json"):
        tjs.ScopeMatrix.from_dict(rows[0].to_dict())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position": "3"}, "'position' must be an integer"),
        ({"position": 40}, "'position'"),
        ({"str_tokens": ["a", 1, "b", "c", "d", "e"]}, "list of strings"),
        ({"scores": [0.1, 0.2]}, "one entry per token"),
        ({"scores": "high"}, "'scores'"),
        ({"target_str": ["x"]}, "'target_str' must be a string"),
        ({"colour": "red"}, "Unknown ScopeResult field"),
    ],
)
def test_malformed_result_dicts_raise_data_file_error(change, message):
    with pytest.raises(DataFileError, match=message):
        tjs.ScopeResult.from_dict(result_dict(["a", "b", "c", "d", "e", "f"], **change))


def test_missing_or_broken_files_raise_data_file_error(tmp_path):
    data = result_dict(["a", "b"])
    del data["scores"]
    with pytest.raises(DataFileError, match="Missing ScopeResult field"):
        tjs.ScopeResult.from_dict(data)
    with pytest.raises(DataFileError, match="Cannot read"):
        tjs.ScopeResult.load_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFileError, match="not valid JSON"):
        tjs.ScopeResult.load_json(tmp_path / "bad.json")


def test_bad_options_raise_scope_errors_that_name_the_fix():
    r = make_result()
    plain = make_result(layer_scores=None, attn_scores=None, mlp_scores=None, head_scores=None, internal_norms={})
    with pytest.raises(OptionError, match="site must be one of"):
        r.internal("heads")
    with pytest.raises(OptionError, match="normalization must be one of"):
        r.internal("layer", "relative")
    with pytest.raises(ScopeError, match="internals=True"):
        plain.internal("layer")
    with pytest.raises(ScopeError, match="internals=True"):
        plain.to_dataframe(internals=True)
    with pytest.raises(ScopeError, match="normalization='raw'"):
        make_result(internal_norms={}).internal("mlp", "scaled")
    with pytest.raises(OptionError, match="k must be a positive integer"):
        r.top(0)
    with pytest.raises(OptionError, match="k must be a positive integer"):
        r.top_heads(-1)
    with pytest.raises(PositionError, match="position must be an integer"):
        r.at_position(99)
    with pytest.raises(OptionError, match="normalization must be one of"):
        r.show(normalization="relative")
    with pytest.raises(OptionError, match="parts must be"):
        show(r, parts=["tokenz"])


def test_collection_errors_raise_scope_errors():
    r = make_result()
    with pytest.raises(ScopeError, match="at least one result"):
        tjs.ScopeMatrix([])
    with pytest.raises(ScopeError, match="same tokens"):
        tjs.ScopeMatrix([r, make_result(["x", "y"])])
    with pytest.raises(ScopeError, match="at least one result"):
        tjs.compare()
    with pytest.raises(ScopeError, match="same tokens"):
        tjs.compare(r, make_result(["x", "y"]))
    with pytest.raises(ScopeError, match="one label per result"):
        tjs.compare(r, make_result(scope="fisher"), labels=["only one"])
    with pytest.raises(ScopeError, match="m.show"):
        tjs.compare(r, tjs.ScopeMatrix([r]))


def test_layer_summary_head_indices_are_integers():
    r = make_result()
    summary = r.layer_summary()
    assert pd.api.types.is_integer_dtype(summary["top_head"]), summary["top_head"].dtype
    heads = r.aggregate(r.internal("head"))
    assert summary["top_head"].iloc[:-1].tolist() == heads.argmax(dim=1).tolist()
    assert pd.isna(summary["top_head"].iloc[-1]) and summary["layer"].iloc[-1] == "final"


def test_static_figure_rejects_unknown_normalization():
    pytest.importorskip("matplotlib")
    with pytest.raises(OptionError, match="normalization must be one of"):
        make_result().plot(normalization="relative")


def test_unwritable_output_paths_raise_output_path_error(tmp_path):
    r = make_result()
    missing = tmp_path / "no_such_folder"
    savers = [r.save_json, tjs.ScopeMatrix([r]).save_json, r.save_html, tjs.ScopeMatrix([r]).save_html]
    try:
        import matplotlib  # noqa: F401

        savers.append(r.save_png)
    except ImportError:
        pass
    for save in savers:
        with pytest.raises(OutputPathError, match="folder exists and is writable"):
            save(missing / "out.file")
