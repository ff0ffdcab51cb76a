"""Build and execute demos/time_series.ipynb without Jupyter (no nbformat/nbclient needed).

Each code cell runs in one shared namespace; printed text becomes a stream output and a
matplotlib Figure left as a cell's last expression becomes a PNG output, as Jupyter would
show it. Run from the repository root::

    OMP_NUM_THREADS=1 python demos/build_time_series_notebook.py
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import sys
from pathlib import Path

CELLS = [
    ("md", """# In-context time-series forecasting with Jacobian Scopes

The paper's case study (docs/method.md §8): a model reads a serialized series (`"51,53,55,"`) and
predicts the next value; the Temperature Scope over the context shows which past values the
forecast leans on. Here on the embedded SmolLM2-135M (which writes every digit as its own
token): scores are combined per *value* from the tokenizer's offsets, the forecast is the exact
distribution over all two-digit values, and the mechanism statistics turn "parroting or
recency?" into numbers."""),
    ("code", """import numpy as np
import tl_jacobian_scopes as tjs
from tl_jacobian_scopes import timeseries as ts

model = tjs.load_default_model(device="cpu")"""),
    ("md", """## Lorenz: the paper's figure

Influence per value (bars) with the series on a second axis; the dashed line marks the
forecast step, and the lower panel is the model's distribution over the next value with the
true value (here we forecast value 179 from values 0..178, teacher-forced, so the truth is
known)."""),
    ("code", """s = ts.serialize(ts.lorenz(180, seed=0), digits=2)
print(s.text[:60], "...")
r = ts.forecast_scope(model, s, steps=[179])[0]
print(f"forecast mean {r.forecast.mean:.2f} ± {r.forecast.std:.2f}, mode {r.forecast.mode:.2f}, true {r.forecast.true:.2f}")
print("mass of two-digit values:", round(r.forecast.mass, 4), " ‖y‖:", round(r.y_norm, 2))
r.plot()"""),
    ("code", """r.to_dataframe().sort_values("score", ascending=False).head(8)"""),
    ("md", """## Mechanism statistics for this forecast

`shape_partial`: rank correlation of influence with the z-normalised similarity of the motif
before each value to the motif before the forecast, with lag partialled out (shape separated
from level); `recency` and `recent_share` (vs `recent_chance`); `knn_lift`: influence on the
successors of the 3 nearest motifs relative to chance; `parrot`: the context-parroting
forecast. Definitions: docs/method.md §8.2."""),
    ("code", """st = r.mechanism(dim=3, recency=5, k=3)
for key, value in st.to_dict().items():
    print(f"{key:18s} {value}")"""),
    ("md", """## Brownian motion

The paper reads recency here. Same figure and statistics."""),
    ("code", """b = ts.forecast_scope(model, ts.serialize(ts.brownian(180, seed=0)), steps=[179])[0]
print(f"forecast mean {b.forecast.mean:.3f} ± {b.forecast.std:.3f}, true {b.forecast.true:.3f}")
b.plot()"""),
    ("code", """stb = b.mechanism()
print({k: round(v, 3) if isinstance(v, float) else v for k, v in stb.to_dict().items()})"""),
    ("md", """## Many steps: steps × lag, and ‖y‖ against the forecast's spread

`steps=[...]` explains several teacher-forced forecasts in one pass (here 12 steps of a
periodic series with period 12). The heatmap shows influence by lag; a band at lag 12 is the
model looking one period back. `ynorm_std_correlation()` is the Spearman correlation of ‖y‖
with the forecast's standard deviation across the steps (the paper's argument predicts < 0)."""),
    ("code", """p = ts.serialize(ts.periodic(96, seed=0, period=12, noise=0.1))
m = ts.forecast_scope(model, p, steps=list(range(84, 96)))
print("Spearman(‖y‖, std) over", len(m), "steps:", round(m.ynorm_std_correlation(), 3))
m.plot()"""),
    ("code", """m.mechanism().round(3)"""),
    ("md", """## The study

`tl-jacobian-scopes-timeseries` runs these statistics over four families, many seeds and three
scopes; its table (with 95% intervals over seeds) is in
`benchmarks/results/timeseries/summary.md`."""),
    ("code", """from pathlib import Path
summary = Path("benchmarks/results/timeseries/summary.md")
print(summary.read_text() if summary.exists() else "run tl-jacobian-scopes-timeseries first")"""),
]


def _run(source: str, env: dict) -> list[dict]:
    outputs: list[dict] = []
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body = tree.body[:-1] if last is not None else tree.body
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(ast.Module(body=body, type_ignores=[]), "<cell>", "exec"), env)
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), env) if last is not None else None
    if buf.getvalue():
        outputs.append({"output_type": "stream", "name": "stdout", "text": buf.getvalue()})
    if value is not None:
        if type(value).__name__ == "Figure":
            png = io.BytesIO()
            value.savefig(png, format="png", dpi=80)
            data = {"image/png": base64.b64encode(png.getvalue()).decode(), "text/plain": repr(value)}
            outputs.append({"output_type": "display_data", "data": data, "metadata": {}})
        else:
            data = {"text/plain": repr(value)}
            if hasattr(value, "to_html"):
                data["text/html"] = value.to_html()
            outputs.append({"output_type": "execute_result", "data": data, "metadata": {}, "execution_count": None})
    return outputs


def main() -> int:
    env: dict = {"__name__": "__main__"}
    cells, count = [], 0
    for kind, source in CELLS:
        if kind == "md":
            cells.append({"cell_type": "markdown", "metadata": {}, "source": source})
            continue
        count += 1
        outputs = _run(source, env)
        for out in outputs:
            if out["output_type"] == "execute_result":
                out["execution_count"] = count
        cells.append({"cell_type": "code", "metadata": {}, "execution_count": count, "source": source,
                      "outputs": outputs})
        print(f"cell {count} done", file=sys.stderr, flush=True)
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                       "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    Path("demos/time_series.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
