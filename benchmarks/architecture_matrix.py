"""Write docs/architectures.md: the architecture matrix (issue 19), one row per family.

Runs the checks of tests/test_architecture_matrix.py (tiny random model per family, float64
brute force on the HF model's own logits) on every backend of the TransformerLens installed
in the running interpreter, stores that leg's statuses in
benchmarks/results/architecture_matrix_tl<major>.json, and rebuilds docs/architectures.md from
every leg's file present. Run it once per leg:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/architecture_matrix.py       # TL 4.x bridge
    OMP_NUM_THREADS=1 .venv-tl3/bin/python benchmarks/architecture_matrix.py   # TL 3.9 bridge + HookedTransformer
"""

from __future__ import annotations

import json
import re
import platform
import sys
import time
import traceback
import warnings
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "architectures.md"
LEGS = [("tl4", "bridge", "TL 4.x bridge"), ("tl3", "bridge", "TL 3.9 bridge"), ("tl3", "hooked", "TL 3.9 HookedTransformer")]


def run_leg() -> Path:
    import architectures as A
    import test_architecture_matrix as M
    from tiny_models import BACKENDS

    warnings.simplefilter("ignore")
    major = version("transformer-lens").split(".")[0]
    leg = "tl4" if major == "4" else "tl3"
    rows: dict[str, dict[str, str]] = {}
    started = time.perf_counter()
    for family in A.FAMILIES:
        rows[family.name] = {"arch": family.arch}
        for backend in BACKENDS:
            try:
                status = M.run_family(family, backend)
            except AssertionError as exc:
                status = "FAILS: " + (str(exc).splitlines() or ["disagrees with the reference"])[0]
            except Exception as exc:  # noqa: BLE001 - a raw error is a finding, recorded as such
                status = f"RAW ERROR: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                traceback.print_exc(limit=1)
            rows[family.name][backend] = status
    out = {
        "command": f"OMP_NUM_THREADS=1 {Path(sys.executable).parent.parent.name}/bin/python benchmarks/architecture_matrix.py",
        "versions": {p: version(p) for p in ("transformer-lens", "transformers", "torch")},
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
        "families": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"architecture_matrix_{leg}.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return path


def _cell(status: str | None, note: str = "") -> str:
    """A short table cell; the full messages are in the leg's JSON file."""
    if status is None:
        return "not run"
    if status == "green":
        return "green" + note
    if status.startswith("green; internals refused: "):
        return "green; internals=True refused (" + _reason(status.split(": ", 1)[1]) + ")"
    if status.startswith("refused: "):
        return "refused (" + _reason(status.split(": ", 1)[1]) + ")"
    return "**" + _short(status) + "**"


def _reason(message: str) -> str:
    found = re.search(r"differs? by ([\d.]+%)", message)
    if found:
        return f"y differs from HF by {found.group(1)}"
    if "is not currently supported" in message:
        return "no HookedTransformer support"
    if "cannot load the weights" in message:
        return "HookedTransformer weight conversion fails"
    if "cannot build" in message:
        found = re.search(r"\((\w+Error)", message)
        return "HookedTransformer config conversion fails" + (f": {found.group(1)}" if found else "")
    if "cannot run this model's forward pass" in message:
        found = re.search(r"\): (\w+Error)", message)
        return "forward raises in TransformerLens" + (f": {found.group(1)}" if found else "")
    if "next-token distribution differs" in message:
        found = re.search(r"total variation ([\d.]+)", message)
        return "self-check: the scopes' p is not the model's" + (f", total variation {found.group(1)}" if found else "")
    if "(eager) attention" in message:
        found = re.search(r"off by ([\d.]+%)", message)
        return "TransformerLens's eager attention differs from HF" + (f" by {found.group(1)}" if found else "")
    if "has no hook point(s)" in message:
        return "hook points missing"
    if "never reached the hook point" in message:
        return "a hook point is never run"
    if "does not feed its output" in message:
        return "observation-only hook point"
    return _short(message)


def _short(text: str) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= 100 else text[:97] + "..."


def write_doc() -> None:
    import architectures as A

    legs = {}
    for leg in ("tl4", "tl3"):
        path = RESULTS / f"architecture_matrix_{leg}.json"
        if path.exists():
            legs[leg] = json.loads(path.read_text())
    lines = [
        "# Architecture matrix",
        "",
        "Every decoder family TransformerLens 4.x registers that `transformers` can build from a config, as a tiny",
        "random model (2 layers, hidden 32, the test suite's word-level tokenizer, random norm gains, the family's",
        "logit transform at a realistic constant). Each is checked against a float64 brute force on the plain Hugging",
        "Face model's own logits: `p`, Semantic (with and without a contrast), Temperature, Fisher exact, rank 1 and",
        "stochastic, batches and `positions=\"all\"` against single calls, and `internals=True` (layer 0 equals the",
        "token scope; layer 1 against a brute force at the HF block's input). The embedding leaf is the token's vector",
        "as it enters the residual stream (docs/method.md §1).",
        "",
        "- **green**: every check agrees with the reference.",
        "- **green (internals=True refused: ...)**: the token scopes agree; TransformerLens lacks the hooks for the",
        "  per-layer/per-head maps on this family, and the library says so with a `ScopeError` naming the family.",
        "- **refused: ...**: TransformerLens cannot run the family (or computes a different function from the HF",
        "  model), and the library refuses it with a `ScopeError` naming the family.",
        "- Anything in **bold** is a failure: a disagreement with the reference or a raw error.",
        "- \"leaf = hook_embed, labelled unverified\": a known deviation from the leaf convention. A step",
        "  TransformerLens does not expose sits between `hook_embed` and the first block (NanoChat's",
        "  parameter-free norm, HRM's `×embedding_scale` into its recurrent stack), so the library takes",
        "  `hook_embed` as the leaf and records `params[\"embedding_leaf\"] = \"hook_embed_unverified\"`;",
        "  the reference differentiates at the same vector.",
        "",
        "Written by `benchmarks/architecture_matrix.py`, from the same checks as `tests/test_architecture_matrix.py`;",
        "each refusal's full message is in `benchmarks/results/architecture_matrix_tl4.json` / `_tl3.json`.",
        "",
    ]
    for leg, data in legs.items():
        v = data["versions"]
        lines.append(f"- {leg}: `{data['command']}` (transformer-lens {v['transformer-lens']}, transformers "
                     f"{v['transformers']}, torch {v['torch']}, Python {data['python']}; {data['seconds']} s on a "
                     "shared, loaded 2-core machine)")
    lines += ["", "| family | HF class | " + " | ".join(name for _, _, name in LEGS) + " |",
              "| --- | --- | " + " | ".join("---" for _ in LEGS) + " |"]
    for family in A.FAMILIES:
        notes = (["Temperature: ArchitectureError, ‖y‖ constant by construction"] if family.scale_free_final_norm else []) + (
            ["leaf = hook_embed, labelled unverified"] if family.leaf_is_raw_embedding else [])
        note = f" ({'; '.join(notes)})" if notes else ""
        cells = [_cell(legs.get(leg, {}).get("families", {}).get(family.name, {}).get(backend), note) for leg, backend, _ in LEGS]
        lines.append(f"| {family.name} | `{family.arch}` | " + " | ".join(cells) + " |")
    lines += ["", "## Not in the matrix", "",
              "Registered by TransformerLens 4.x but not text decoders that `transformers` builds from its own classes:", ""]
    for reason, archs in A.SKIPPED_REASONS.items():
        lines.append(f"- {reason}: " + ", ".join(f"`{a}`" for a in archs))
    DOC.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if "--doc-only" not in sys.argv:
        print("wrote", run_leg())
    write_doc()
    print("wrote", DOC)
