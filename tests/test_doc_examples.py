"""Every ``python`` block of the README and of docs/ runs as written, and so does every
docstring example of the package, on the embedded model.

- Markdown: the ``python`` fences of one file run in order in one namespace (as a reader pastes
  them), from a temporary folder (they write files). A block whose first line starts with
  ``# Not run by the tests:`` says why (the Hugging Face hub, GPUs) and is skipped; signatures
  are in ``text`` fences, never run.
- Docstrings: ``doctest`` examples of every module of the package, with ``model`` (the embedded
  model, as in the docs' convention) and ``tjs`` given; ``+SKIP`` only with a reason on the line.

``tjs.load_default_model()`` loads the model for real the first time and hands the same model to
later calls with the same arguments (pages and docstrings each load it), so the model is loaded
once. TransformerLens 4.x leg only: the blocks use the library's public API, which both legs
already test, and running them twice would add their time (about a minute) to both legs.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import pkgutil
import re
from pathlib import Path

import pytest

import tl_jacobian_scopes as tjs

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = "# Not run by the tests:"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
TL_MAJOR = int(importlib.metadata.version("transformer-lens").split(".")[0])
pytestmark = pytest.mark.skipif(TL_MAJOR < 4, reason="documentation examples run on the TransformerLens 4.x leg only")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, code)`` of every ``python`` fence, in order."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group(1).strip().split(" ")[0] in ("python", "py"):
            out.append((text[: m.start()].count("\n") + 2, m.group(2)))
    return out


@pytest.fixture
def shared_model_loads(monkeypatch, tmp_path, default_model):
    """Run from a temporary folder; ``load_default_model()`` hands back the session's model."""
    real = tjs.load_default_model

    def load_default_model(device=None, backend=None, **kwargs):
        if backend is None and not kwargs and (device is None or str(device) == "cpu"):
            return default_model
        return real(device=device, backend=backend, **kwargs)

    monkeypatch.setattr(tjs, "load_default_model", load_default_model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return default_model


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(path: Path, shared_model_loads) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(path):
        if code.lstrip().startswith(SKIP_MARK):
            continue
        exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)  # noqa: S102


def test_signature_blocks_are_not_python() -> None:
    """A ``python`` fence must parse: signatures go in ``text`` fences."""
    for path in markdown_files():
        for line, code in python_blocks(path):
            compile(code, f"{path.relative_to(ROOT)}:{line}", "exec")


def test_hub_only_blocks_say_why() -> None:
    for path in markdown_files():
        for line, code in python_blocks(path):
            if "load_model(\"" in code and "meta-llama" in code:
                assert code.lstrip().startswith(SKIP_MARK), f"{path}:{line}"


def _modules() -> list[str]:
    names = ["tl_jacobian_scopes"]
    for info in pkgutil.walk_packages(tjs.__path__, "tl_jacobian_scopes."):
        names.append(info.name)
    return names


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    tests = []
    for name in _modules():
        if name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra (gradio) that this environment lacks
            continue
        tests += [t for t in finder.find(module, name) if t.examples]
    return tests


DOCTESTS = _doctests()


def test_every_skip_has_a_reason() -> None:
    for t in DOCTESTS:
        for ex in t.examples:
            if ex.options.get(doctest.SKIP):
                before = ex.source.split("# doctest:")[0]
                assert "#" in before, f"{t.name}: '+SKIP' without a reason comment: {ex.source!r}"


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_examples_run(test: doctest.DocTest, shared_model_loads) -> None:
    globs = dict(test.globs)
    globs.update(model=shared_model_loads, tjs=tjs)
    test = doctest.DocTest(test.examples, globs, test.name, test.filename, test.lineno, test.docstring)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=lambda s: failures.append(s))
    assert not failures, "".join(failures)


failures: list[str] = []


@pytest.fixture(autouse=True)
def _clear_failures():
    failures.clear()
    yield
