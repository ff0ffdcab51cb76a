"""Every demo notebook (demos/*.ipynb) runs top to bottom in a real Jupyter kernel, offline.

Each notebook is copied to a temporary folder and executed with nbclient in CI's fast mode
(``TJS_NOTEBOOK_FAST=1``: the notebooks shrink their heavy cells), from the repository root,
with the Hugging Face libraries set offline. A cell that raises fails the test with its source
and traceback. The committed notebook and the executed copy must each stay under
``MAX_NOTEBOOK_BYTES``: views load CircuitsVis's JavaScript once per kernel session, so a
notebook's size is its content.

Runs on the TransformerLens 4.x leg only (``make test``); the 3.9 leg skips it, since the
notebooks exercise the library's API, which both legs already test, and executing them twice
would only double CI's time.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "demos").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 2 * 1024 * 1024
CELL_TIMEOUT_S = 600

TL_MAJOR = int(importlib.metadata.version("transformer-lens").split(".")[0])
pytestmark = pytest.mark.skipif(
    TL_MAJOR < 4, reason="demo notebooks are executed on the TransformerLens 4.x leg only (make test)"
)


def test_demos_have_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "case_studies.ipynb", "inside_the_model.ipynb", "faithfulness.ipynb"} <= names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_nothing_outside_the_repository(notebook: Path) -> None:
    """faithfulness.ipynb read ../shared/data/ (a folder beside the clone), so it failed in any
    fresh clone; the LAMBADA sample it needs ships in the package (tjs.data.lambada_path())."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    sources = [c.source for c in cells if c.cell_type == "code"]
    assert not [s for s in sources if "ROOT.parent" in s or "../shared" in s or '"shared"' in s]


def _bundle_copies(text: str) -> int:
    from tl_jacobian_scopes.views.html import circuitsvis_bundle

    # The bundle sits JSON-escaped inside the notebook file: count a distinctive stretch of it.
    return text.count(circuitsvis_bundle()[:200].replace("\\", "\\\\").replace('"', '\\"'))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_size(notebook: Path) -> None:
    size = notebook.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, f"{notebook.name} is {size / 1024:.0f} KB, over {MAX_NOTEBOOK_BYTES // 1024} KB"
    # CircuitsVis's JavaScript goes in once per kernel session, not once per view.
    assert _bundle_copies(notebook.read_text(encoding="utf-8")) <= 1


def _executed_outputs(notebook: Path) -> bool:
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    return all(c.get("execution_count") for c in cells if c.cell_type == "code")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_executed(notebook: Path) -> None:
    # Notebooks ship with their outputs (the full run), every code cell executed in order.
    assert _executed_outputs(notebook), f"{notebook.name} has code cells without outputs: execute it and commit it"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this environment: fast mode, offline, one thread as in the rest of CI.
    for name, value in {"TJS_NOTEBOOK_FAST": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    copy = tmp_path / notebook.name
    shutil.copy(notebook, copy)
    executed = nbformat.read(copy, as_version=4)
    client = NotebookClient(executed, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = next((c for c in executed.cells if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        source = failed.source if failed is not None else "(cell not found)"
        pytest.fail(f"{notebook.name}: a cell raised.\n--- cell source ---\n{source}\n--- error ---\n{exc}",
                    pytrace=False)
    seconds = time.perf_counter() - start
    nbformat.write(executed, copy)
    size = copy.stat().st_size
    print(f"{notebook.name}: fast mode {seconds:.0f} s, executed copy {size / 1024:.0f} KB")
    assert _bundle_copies(copy.read_text(encoding="utf-8")) <= 1
    assert size <= MAX_NOTEBOOK_BYTES, (
        f"{notebook.name} executed in fast mode is {size / 1024:.0f} KB, over {MAX_NOTEBOOK_BYTES // 1024} KB"
    )
