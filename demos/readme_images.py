"""Regenerate the README's pictures (docs/images/*.png): one per view, rendered offline by
headless Chromium from the same self-contained HTML a user saves.

Usage: python demos/readme_images.py   (needs Chromium: apt-get install chromium)
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.views.html import ScopeView, comparison_sections, result_sections

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
PROMPT = "As a state-of-the-art AI assistant, you never argue or deceive, because you are"


def screenshot(view: ScopeView, name: str, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        page = view.save(Path(tmp) / "view.html")
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-background-networking", "--proxy-server=http://127.0.0.1:9",
             f"--user-data-dir={tmp}/profile", "--virtual-time-budget=10000",
             f"--screenshot={OUT / name}", f"--window-size=1100,{height}", page.as_uri()],
            check=True, capture_output=True,
        )
    print("wrote", OUT / name)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = tjs.load_default_model(device="cpu")
    truthful = tjs.semantic_scope(model, PROMPT, target=" truthful", contrast=" nice")
    nice = tjs.semantic_scope(model, PROMPT, target=" nice", contrast=" truthful")
    fisher = tjs.fisher_scope(model, PROMPT, internals=True)
    temperature = tjs.temperature_scope(model, PROMPT)
    screenshot(ScopeView(result_sections(fisher, parts=("tokens",))), "view_tokens.png", 115)
    screenshot(ScopeView(comparison_sections([truthful, nice, fisher, temperature])), "view_comparison.png", 200)
    screenshot(ScopeView(result_sections(fisher, parts=("layers",))), "view_layers.png", 720)
    screenshot(ScopeView(result_sections(fisher, parts=("heads",))), "view_heads.png", 770)
    fisher.save_png(OUT / "static_figure.png")
    print("wrote", OUT / "static_figure.png")


if __name__ == "__main__":
    main()
