"""Execute a demo notebook in place with a real Jupyter kernel (nbclient), from the repository root.

    OMP_NUM_THREADS=1 python demos/execute_notebook.py demos/time_series.ipynb

Needs ``pip install nbclient ipykernel``. Cells run in order in one kernel; the notebook is
saved with its outputs, and any error stops the run with the cell that failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 900) -> None:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
    nbformat.write(notebook, path)
    print(f"{path}: executed in {time.perf_counter() - start:.0f} s, {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        execute(Path(arg))
