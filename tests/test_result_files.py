"""Result files are standard JSON; bad input to results and views raises ScopeError subclasses."""

import json
import math

import pandas as pd
import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_patching as _patching
from scope_fixtures import make_result, result_dict
from tiny_models import TINY_TEXTS, tiny_model
from tl_jacobian_scopes.errors import DataFileError, OptionError, OutputPathError, PositionError, ScopeError
from tl_jacobian_scopes.views import show

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", "bridge")[0]


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

    again = tjs.results.ScopeResult.load_json(tmp_path / "r.json")
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
    assert torch.isnan(tjs.results.ScopeResult.load_json(path).stderr[1])


def test_scope_matrix_json_round_trip(tmp_path):
    rows = [make_result(position=p) for p in (2, 5)]
    rows[0].scores[0] = NAN
    matrix = tjs.results.ScopeMatrix(rows)
    data = _strict_loads(matrix.save_json(tmp_path / "m.json").read_text(encoding="utf-8"))
    assert data["kind"] == "ScopeMatrix" and data["format"] == "tl_jacobian_scopes" and len(data["results"]) == 2
    again = tjs.results.ScopeMatrix.load_json(tmp_path / "m.json")
    assert again.positions == [2, 5] and again.str_tokens == matrix.str_tokens
    torch.testing.assert_close(again.scores, matrix.scores, equal_nan=True)
    assert tjs.results.ScopeMatrix.from_dict(matrix.to_dict()).targets == matrix.targets
    with pytest.raises(DataFileError, match="ScopeResult.load_json"):
        tjs.results.ScopeMatrix.from_dict(rows[0].to_dict())


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
        tjs.results.ScopeResult.from_dict(result_dict(["a", "b", "c", "d", "e", "f"], **change))


def test_missing_or_broken_files_raise_data_file_error(tmp_path):
    data = result_dict(["a", "b"])
    del data["scores"]
    with pytest.raises(DataFileError, match="Missing ScopeResult field"):
        tjs.results.ScopeResult.from_dict(data)
    with pytest.raises(DataFileError, match="Cannot read"):
        tjs.results.ScopeResult.load_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFileError, match="not valid JSON"):
        tjs.results.ScopeResult.load_json(tmp_path / "bad.json")


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
        tjs.results.ScopeMatrix([])
    with pytest.raises(ScopeError, match="same tokens"):
        tjs.results.ScopeMatrix([r, make_result(["x", "y"])])
    with pytest.raises(ScopeError, match="at least one result"):
        tjs.compare()
    with pytest.raises(ScopeError, match="same tokens"):
        tjs.compare(r, make_result(["x", "y"]))
    with pytest.raises(ScopeError, match="one label per result"):
        tjs.compare(r, make_result(scope="fisher"), labels=["only one"])
    with pytest.raises(ScopeError, match="m.show"):
        tjs.compare(r, tjs.results.ScopeMatrix([r]))


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
    savers = [r.save_json, tjs.results.ScopeMatrix([r]).save_json, r.save_html, tjs.results.ScopeMatrix([r]).save_html]
    try:
        import matplotlib  # noqa: F401

        savers.append(r.save_png)
    except ImportError:
        pass
    for save in savers:
        with pytest.raises(OutputPathError, match="folder exists and is writable"):
            save(missing / "out.file")


# ---- tjs.load, file headers, ScopeBatch ------------------------------------------------------


def _same_result(a, b):
    assert type(a) is tjs.results.ScopeResult and a.str_tokens == b.str_tokens and a.position == b.position
    torch.testing.assert_close(a.scores, b.scores, equal_nan=True)
    torch.testing.assert_close(a.head_scores, b.head_scores, equal_nan=True)


def test_every_kind_round_trips_through_tjs_load(tmp_path):
    r = make_result(stderr=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    r.scores[1] = NAN  # null in the file, NaN again after loading
    matrix = tjs.results.ScopeMatrix([make_result(position=p) for p in (1, 4)])
    batch = tjs.results.ScopeBatch([make_result(), make_result(["x", " y", " z"], scope="fisher")])
    batch_of_matrices = tjs.results.ScopeBatch([matrix, tjs.results.ScopeMatrix([make_result(["a", "b"], position=1)])])
    for name, obj in (("r", r), ("m", matrix), ("b", batch), ("bm", batch_of_matrices)):
        path = obj.save_json(tmp_path / f"{name}.json")
        header = _strict_loads(path.read_text(encoding="utf-8"))
        assert {k: header[k] for k in ("format", "kind", "version")} == {
            "format": "tl_jacobian_scopes", "kind": type(obj).__name__, "version": 1}
    _same_result(tjs.load(tmp_path / "r.json"), r)
    m = tjs.load(tmp_path / "m.json")
    assert type(m) is tjs.results.ScopeMatrix and m.positions == [1, 4]
    torch.testing.assert_close(m.scores, matrix.scores)
    b = tjs.load(tmp_path / "b.json")
    assert type(b) is tjs.results.ScopeBatch and len(b) == 2 and b[1].scope == "fisher"
    for again, original in zip(b, batch):
        _same_result(again, original)
    bm = tjs.load(str(tmp_path / "bm.json"))
    assert [type(x) for x in bm] == [tjs.results.ScopeMatrix] * 2 and bm[1].str_tokens == ["a", "b"]
    assert type(tjs.results.ScopeBatch.load_json(tmp_path / "b.json")) is tjs.results.ScopeBatch


def test_files_without_a_header_load_as_before(tmp_path):
    plain = result_dict(["a", "b", "c"])  # a ScopeResult file of an older version: no format/kind/version
    (tmp_path / "old_result.json").write_text(json.dumps(plain))
    old_matrix = {"kind": "scope_matrix", "results": [result_dict(["a", "b", "c"], position=p) for p in (0, 2)]}
    (tmp_path / "old_matrix.json").write_text(json.dumps(old_matrix))
    assert tjs.load(tmp_path / "old_result.json").str_tokens == ["a", "b", "c"]
    assert tjs.results.ScopeResult.load_json(tmp_path / "old_result.json").position == 2
    assert tjs.load(tmp_path / "old_matrix.json").positions == [0, 2]
    assert tjs.results.ScopeMatrix.load_json(tmp_path / "old_matrix.json").positions == [0, 2]


def _header(kind, **fields):
    return {"format": "tl_jacobian_scopes", "kind": kind, "version": 1, **fields}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94", "not UTF-8"),  # a pickle
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nesting beyond the recursion limit
        ('{"scope": ' + "9" * 5000 + "}", "not valid JSON"),  # an integer beyond Python's digit limit
        ('{"scope": "semantic", "sco', "not valid JSON"),  # truncated
        ("", "not valid JSON"),
        ("[1, 2, 3]", "holds a JSON list"),
        ("null", "holds a JSON NoneType"),
        ('{"hello": "world"}', "expected one of .*ScopeBatch.*ScopeMatrix.*ScopeResult"),
        (json.dumps(_header("Spreadsheet")), "found kind 'Spreadsheet'"),
        (json.dumps({**result_dict(["a"]), "format": "other_lib"}), "'other_lib' file"),
        (json.dumps({**result_dict(["a"]), **_header("ScopeResult", version=99)}), "upgrade tl_jacobian_scopes"),
        (json.dumps({**result_dict(["a"]), **_header("ScopeResult", version="1")}), "'version' must be an integer"),
        (json.dumps(_header("ScopeMatrix", results="many")), "list of results"),
        (json.dumps(_header("ScopeBatch", items=[{"kind": "Spreadsheet"}])), "found \\['Spreadsheet'\\]"),
        (json.dumps(_header("ScopeBatch", items=[{"scope": 3}])), "valid ScopeBatch"),
        (json.dumps(result_dict(["a", "b"], head_scores=[[1.0, 2.0]])), "'head_scores' must have 3 dimension"),
        (json.dumps(result_dict(["a", "b"], stderr=[0.1])), "'stderr' must have 1 dimension"),
        (json.dumps({**result_dict(["a"]), "__reduce__": "os.system"}), "Unknown ScopeResult field"),
    ],
)
def test_hostile_or_garbled_files_raise_data_file_error_naming_the_path(tmp_path, content, message):
    path = tmp_path / "suspect.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message) as info:
        tjs.load(path)
    assert "suspect.json" in str(info.value)


def test_loading_a_file_as_the_wrong_type_says_how_to_read_it(tmp_path):
    make_result().save_json(tmp_path / "r.json")
    tjs.results.ScopeBatch([make_result()]).save_json(tmp_path / "b.json")
    with pytest.raises(DataFileError, match="tjs.load"):
        tjs.results.ScopeBatch.load_json(tmp_path / "r.json")
    with pytest.raises(DataFileError, match="tjs.load"):
        tjs.results.ScopeResult.load_json(tmp_path / "b.json")


def test_batch_is_a_list_with_a_combined_dataframe_and_views():
    items = [make_result(), make_result(["x", " y", " z"], scope="fisher"), make_result(position=2)]
    batch = tjs.results.ScopeBatch(items)
    assert isinstance(batch, list) and batch == items and len(batch) == 3 and batch[1] is items[1]
    assert list(batch) == items and batch[-1] is items[2] and batch[:2] == items[:2]
    df = batch.to_dataframe()
    expected = pd.concat([r.to_dataframe().assign(prompt_index=i) for i, r in enumerate(items)], ignore_index=True)
    pd.testing.assert_frame_equal(df, expected[["prompt_index", *items[0].to_dataframe().columns]])
    assert batch.top(2) == [r.top(2) for r in items]
    text = repr(batch)
    assert text.startswith("ScopeBatch(3 ScopeResult, one per prompt)") and "[2] ScopeResult(" in text
    page = batch.show()._repr_html_()  # tokens differ: each prompt's own view, no comparison
    assert page.count("<h3>Prompt ") == 3 and "Comparison" not in page
    same = tjs.results.ScopeBatch([make_result(), make_result(scope="fisher")])
    assert "Comparison" in same.show()._repr_html_() and "prompt 1" in same.show()._repr_html_()
    matrices = tjs.results.ScopeBatch([tjs.results.ScopeMatrix([make_result(position=p) for p in (1, 3)])])
    assert set(matrices.to_dataframe()["prompt_index"]) == {0} and len(matrices.to_dataframe()) == 12
    with pytest.raises(ScopeError, match=r"batch\[i\]\[j\].top"):
        matrices.top(2)


def test_escaped_prompt_headings_in_batch_views():
    batch = tjs.results.ScopeBatch([make_result(["<script>", "x"]), make_result(["a", "b", "c"])])
    page = batch.show()._repr_html_()
    assert "<h3>Prompt 0: &lt;script&gt;x</h3>" in page


# ---- equality, and tampered files ----------------------------------------------------------------


def test_results_compare_equal_by_content_and_batches_like_lists(tmp_path):
    """`==` on two results (or batches, as lists) raised 'Boolean value of Tensor ... ambiguous'."""
    import copy

    r = make_result()
    r.scores[0] = float("nan")
    assert r == copy.deepcopy(r) and not r != copy.deepcopy(r)
    assert tjs.load(r.save_json(tmp_path / "r.json")) == r  # a round trip, NaN included
    changed = copy.deepcopy(r)
    changed.scores[1] += 1e-3
    assert r != changed and r != "r"
    batch = tjs.results.ScopeBatch([r, make_result(position=3)])
    assert batch == copy.deepcopy(batch) and batch != tjs.results.ScopeBatch([r, changed])
    assert tjs.load(batch.save_json(tmp_path / "b.json")) == batch
    matrix = tjs.results.ScopeMatrix([make_result(position=p) for p in (3, 4)])
    assert matrix == copy.deepcopy(matrix) and matrix != tjs.results.ScopeMatrix([make_result(position=3)])
    patching = _patching(torch.tensor([[0.5, float("nan")]]))
    assert patching == copy.deepcopy(patching) and tjs.load(patching.save_json(tmp_path / "p.json")) == patching


def test_tampered_internal_maps_and_batch_kinds_are_refused(tmp_path):
    """A file with some internal maps null loaded, then show() failed on an assert; a batch item
    whose kind is a list raised TypeError (unhashable) instead of DataFileError."""
    import json

    path = make_result().save_json(tmp_path / "r.json")
    assert tjs.load(path).show().to_html()  # the untouched file has internals and shows them
    for change in ({"attn_scores": None}, {"head_scores": None},
                   {"mlp_scores": json.loads(path.read_text())["mlp_scores"][:1]}):
        data = json.loads(path.read_text())
        data.update(change)
        (tmp_path / "t.json").write_text(json.dumps(data))
        with pytest.raises(tjs.DataFileError):
            tjs.load(tmp_path / "t.json")
    batch = tjs.results.ScopeBatch([make_result()]).to_dict()
    batch["items"][0]["kind"] = []
    (tmp_path / "b.json").write_text(json.dumps(batch))
    with pytest.raises(tjs.DataFileError):
        tjs.load(tmp_path / "b.json")


# ---- numbers, shapes and nesting a file cannot hold ----------------------------------------------


@pytest.fixture(scope="module")
def saved_internals(tiny):
    return tjs.semantic_scope(tiny, TINY_TEXTS[0], internals=True, progress=False).to_dict()


@pytest.mark.parametrize("rows", [1, 2])
def test_internal_norms_whose_shape_differs_from_their_map_are_refused(saved_internals, rows):
    data = json.loads(json.dumps(saved_internals))
    assert len(data["internal_norms"]["layer"]) == 3  # tiny: 2 layers + final
    data["internal_norms"]["layer"] = data["internal_norms"]["layer"][:rows]  # 1 row would broadcast silently
    with pytest.raises(tjs.DataFileError, match=r"internal_norms\.layer.*shape of 'layer_scores' \(3, "):
        tjs.results.ScopeResult.from_dict(data)
    assert tjs.results.ScopeResult.from_dict(json.loads(json.dumps(saved_internals))).has_internals  # the real file loads


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
    result = tjs.patching.PatchingResult(values=values, metric="restored", method="activation patching", site="head",
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
