"""Execute demo notebooks in place with a real Jupyter kernel (nbclient), from the repository root.

    OMP_NUM_THREADS=1 python demos/execute_notebook.py demos/quickstart.ipynb demos/time_series.ipynb
    python demos/execute_notebook.py --fast --dry-run demos/*.ipynb   # CI's fast mode, files untouched

Needs ``pip install -e ".[test]"`` (nbclient, nbformat, ipykernel). Cells run in order in one
kernel; the notebook is saved with its outputs, and any error stops the run with the cell that
failed. ``--fast`` sets ``TJS_NOTEBOOK_FAST=1``, which the notebooks read to shrink their heavy
cells (CI); commit notebooks executed without it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import nbformat
from nbclient import NotebookClient

FAST_VARIABLE = "TJS_NOTEBOOK_FAST"


def execute(path: Path, timeout: int = 900, fast: bool = False, save_to: Optional[Path] = None,
            cwd: Path = Path(".")) -> tuple[float, int]:
    """Run every cell of ``path`` in a fresh kernel started in ``cwd``; write the executed notebook to
    ``save_to`` (default: ``path`` itself). Returns ``(seconds, bytes written)``.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (its source and traceback are in the message).
    """
    notebook = nbformat.read(path, as_version=4)
    previous = os.environ.get(FAST_VARIABLE)
    os.environ[FAST_VARIABLE] = "1" if fast else "0"  # the kernel inherits the environment
    start = time.perf_counter()
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        if previous is None:
            del os.environ[FAST_VARIABLE]
        else:
            os.environ[FAST_VARIABLE] = previous
    seconds = time.perf_counter() - start
    target = save_to or path
    nbformat.write(notebook, target)
    return seconds, target.stat().st_size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--fast", action="store_true", help=f"set {FAST_VARIABLE}=1 (CI's smaller heavy cells)")
    parser.add_argument("--dry-run", action="store_true", help="execute, but write the result to a temporary file")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    args = parser.parse_args()
    total = 0.0
    for notebook_path in args.notebooks:
        out = Path(tempfile.mkdtemp()) / notebook_path.name if args.dry_run else None
        seconds, size = execute(notebook_path, args.timeout, args.fast, out)
        total += seconds
        print(f"{notebook_path}: executed in {seconds:.0f} s{' (fast mode)' if args.fast else ''}, "
              f"{size / 1024:.0f} KB{' (not saved)' if args.dry_run else ''}", flush=True)
    print(f"total {total:.0f} s")
