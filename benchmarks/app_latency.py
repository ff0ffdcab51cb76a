"""The app's response time, measured in a real headless Chromium (issue 14).

Starts the app on the embedded model, types a new 64-token prompt and times, from the click
to the coloured tokens on screen: the first request (Fisher, rank 1: the last position), the
background pass that explains every other position (until the page says so), and then a
click on a token (a cached row). Prints one JSON object with the environment.

    PYTHONPATH=. python benchmarks/app_latency.py [--repeats 3]

Needs gradio and playwright (pip) and Chromium (/usr/bin/chromium). Numbers from a shared
machine are noisy: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import sys
import time

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.environment import environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prompt_of(model, n_tokens: int, seed_text: str) -> str:
    """A prompt of exactly ``n_tokens`` tokens (BOS included) built from ``seed_text``."""
    with_bos = model.to_tokens(seed_text * 20)[0].tolist()
    bos = len(with_bos) - len(model.to_tokens(seed_text * 20, prepend_bos=False)[0])
    text = model.tokenizer.decode(with_bos[bos:n_tokens])
    while model.to_tokens(text).shape[-1] > n_tokens:  # decoding can merge tokens differently
        text = text[:-1]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from tl_jacobian_scopes.app import build_app, launch

    model = tjs.load_default_model(device="cpu")
    blocks = build_app(model)
    _, url, _ = launch(blocks, port=_free_port(), prevent_thread_lock=True, quiet=True)
    texts = ["The quick brown fox jumps over the lazy dog while the farmer watches. ",
             "In 1905 Einstein published four papers that changed physics forever, and "]
    first, every, click = [], [], []
    n_shown = None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--no-sandbox"])
        for r in range(args.repeats):
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#tjs-run")
            # A new prompt each time: the first request is never served from the cache.
            prompt = _prompt_of(model, args.tokens, texts[r % 2] + f"Round {r}. ")
            page.fill("#tjs-prompt textarea", prompt)
            start = time.perf_counter()
            page.click("#tjs-run")
            page.wait_for_selector("#tjs-message [data-run='1']", timeout=300_000)
            first.append(time.perf_counter() - start)
            n_shown = page.locator("#tjs-tokens [data-pos]").count()
            page.wait_for_selector("#tjs-ready [data-ready]", timeout=300_000)
            every.append(time.perf_counter() - start)
            start = time.perf_counter()
            page.click("#tjs-tokens [data-pos='20']")
            page.wait_for_selector("#tjs-message [data-run='2']", timeout=300_000)
            click.append(time.perf_counter() - start)
            page.close()
        browser.close()
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON only
        blocks.close()
    print(json.dumps({
        "what": ("app latency in headless Chromium, from the click: Explain -> coloured tokens shown; "
                 "-> every position explained (background); then a click on a token -> its explanation shown"),
        "scope": "fisher rank 1", "prompt_tokens": n_shown,
        "first_request_s": {"median": statistics.median(first), "all": first},
        "all_positions_ready_s": {"median": statistics.median(every), "all": every},
        "token_click_s": {"median": statistics.median(click), "all": click},
        "environment": environment(model),
    }, indent=2))


if __name__ == "__main__":
    main()
