"""Static figures: token strings are drawn literally, and the user's matplotlib state is left alone."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tl_jacobian_scopes as tjs
from scope_fixtures import make_result

pytest.importorskip("matplotlib")

# Each of these is mathtext syntax when matplotlib parses it; "$^_$" and "$\\frac$" do not parse at all.
MATH_TOKENS = ["$x$", "$", "\\", "^", "_", "$^_$", "a$b$c_d^e", "$\\frac$", " 5$"]


def test_tokens_with_mathtext_syntax_are_drawn_literally(tmp_path):
    from PIL import Image

    r = make_result(MATH_TOKENS, scope="semantic", target_str="$^_$", predicted_str="$x$", contrast_str="_^")
    fig = r.plot()
    path = r.save_png(tmp_path / "math.png")  # drawing is where mathtext raises
    image = Image.open(path).convert("L")
    assert image.size[0] > 300 and len(set(image.getdata())) > 20  # not blank
    for ax in fig.axes[:2]:  # bars and the layer x position heatmap label every token
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == [repr(t)[1:-1] for t in MATH_TOKENS]
    texts = [t for ax in fig.axes for t in (*ax.get_xticklabels(), ax.title, ax.yaxis.label)]
    assert texts and not any(t.get_parse_math() for t in texts if "$" in t.get_text())
    assert "$^_$" in fig.axes[0].get_title()
    assert r.save_png(tmp_path / "figure.out").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # PNG whatever the suffix


SCRIPT = r"""
import sys
import matplotlib
matplotlib.use("svg")  # the user's choice, which the library must not change
from scope_fixtures import make_result
from matplotlib.figure import Figure

r = make_result()
fig = r.plot()
r.save_png(sys.argv[1])
make_result(scope="fisher").save_png(sys.argv[1])
assert isinstance(fig, Figure), type(fig)
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules  # no pyplot state was created or touched
import matplotlib.pyplot as plt
assert plt.get_fignums() == [], plt.get_fignums()  # figures are not registered with pyplot
print("ok")
"""


def test_figures_leave_the_backend_and_pyplot_alone(tmp_path):
    tests = Path(__file__).parent
    path = os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "f.png")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_a_figure_displays_itself_in_a_notebook_without_pyplot():
    """Jupyter shows an object through its _repr_png_: the figure appears once per display,
    whatever the backend, and no pyplot state is involved."""
    from scope_fixtures import make_result

    fig = make_result().plot()
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def _deep_result(n_layers=30, n_heads=9, n_tokens=12):
    """SmolLM2-135M's shape (30 layers x 9 heads), distinct values per (layer, head)."""
    from scope_fixtures import result_dict

    import tl_jacobian_scopes as tjs

    grid = lambda *shape: (torch.arange(1, 1 + torch.Size(shape).numel()).reshape(shape) / 10.0).tolist()  # noqa: E731
    maps = {"layer": grid(n_layers + 1, n_tokens), "attn": grid(n_layers, n_tokens), "mlp": grid(n_layers, n_tokens),
            "head": grid(n_layers, n_heads, n_tokens)}
    return tjs.results.ScopeResult.from_dict(result_dict([f" t{i}" for i in range(n_tokens)], scope="fisher",
                                                 **{f"{k}_scores": v for k, v in maps.items()}, internal_norms=maps))


def test_layer_by_head_panel_has_layers_as_rows_and_readable_layer_labels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = _deep_result()
    fig = r.plot()
    FigureCanvasAgg(fig).draw()
    _, layers_ax, heads_ax = fig.axes[:3]
    heads = heads_ax.images[0].get_array()
    assert heads.shape == (30, 9)  # rows = layers, columns = heads, as in the HTML view
    expected = r.aggregate(r.internal("head", "scaled")).numpy()
    assert np.allclose(heads, expected)
    assert heads_ax.get_ylabel() == "layer" and heads_ax.get_xlabel() == "head"
    renderer = fig.canvas.get_renderer()
    for ax, n_rows in ((layers_ax, 31), (heads_ax, 30)):
        labels = [t for t in ax.get_yticklabels() if t.get_text()]
        assert len(labels) >= n_rows // 2  # at most every other layer left unlabelled
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.y0)
        assert all(low.y1 <= high.y0 + 0.5 for low, high in zip(boxes, boxes[1:])), "layer labels overlap"


# ---- a loaded patching map -----------------------------------------------------------------------


def test_patching_plot_draws_a_loaded_mathtext_row_label_literally(tmp_path):
    import io

    values = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    result = tjs.patching.PatchingResult(values=values, metric="restored", method="activation patching", site="head",
                                row_labels=["L0", "$\\frac{$"], col_labels=["H0", "H1", "H2"], clean_str_tokens=["a"],
                                corrupted_str_tokens=["b"], answer_str="cat", wrong_str="dog", ld_clean=2.0,
                                ld_corrupted=-1.0, model_name="m")
    result.save_json(tmp_path / "p.json")
    fig = tjs.load(tmp_path / "p.json").plot()
    fig.savefig(io.BytesIO(), format="png")  # mathtext would raise on "$\frac{$"
    assert "$\\frac{$" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
