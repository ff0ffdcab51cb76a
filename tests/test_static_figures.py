"""Static figures: token strings are drawn literally, and the user's matplotlib state is left alone."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
