"""A bounded load test of the app (issue 20), on 127.0.0.1 only.

Starts the app (``python -m tl_jacobian_scopes.app``, default budget) as its own process, with
``TMPDIR`` a fresh folder (so every file it writes is counted), then:

1. **Longest allowed jobs vs a short request.** Session 1 asks (API ``/explain``) for each of the
   two longest jobs the budget allows: Fisher's exact trace on a prompt of ``max_trace_tokens``
   tokens, and Fisher rank ``max_rank`` on a prompt of ``max_tokens`` tokens; one second later
   session 2 asks for a short Temperature explanation. Reports session 2's latency and each
   job's duration and outcome.
2. **A disconnecting client.** A headless Chromium page starts exact Fisher and is closed; reports
   how long the server keeps using CPU after the close (sampled from /proc).
3. **Flat memory and disk.** 5 sessions (gradio_client) send ``--requests`` requests in all
   (explain, click, compare, forecast, with new prompts) while a Chromium page explains new
   prompts and fetches their files (HTML, PNG, JSON: the disk the app writes); the server's RSS
   and the disk under ``TMPDIR`` are sampled every ``--requests // 6`` requests.
4. **SIGTERM.** The server is stopped with SIGTERM; reports its exit status and the disk left.

Prints one JSON object (figures, ratios, environment). Every count and wait is bounded.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/app_load.py [--requests 300]

Needs gradio_client and playwright (pip) and Chromium. A shared machine gives noisy numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROMPTS = ["The capital of France is", "One, two, three, four,", "The cat sat on the mat because it was",
           "In 1905 Einstein published", "Water boils at a temperature of"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _wait_up(url: str, proc: subprocess.Popen, limit: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the app exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the app did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cache-mb", type=float, default=None,
                        help="the app's disk cap (Budget.cache_mb; default its 64 MB): a smaller one shows "
                             "disk use flat at the cap within a short run")
    args = parser.parse_args()
    from gradio_client import Client

    import tl_jacobian_scopes as tjs
    from tl_jacobian_scopes.app.budget import Budget
    from tl_jacobian_scopes.environment import environment

    budget = Budget()
    tmp = Path(tempfile.mkdtemp(prefix="tjs-load-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    env.pop("GRADIO_TEMP_DIR", None)  # the app puts Gradio's files in its own folder
    command = [sys.executable, "-m", "tl_jacobian_scopes.app", "--port", str(port), "--device", "cpu"]
    if args.cache_mb is not None:  # the same app and launch, with only the disk cap changed
        budget = Budget(cache_mb=args.cache_mb)
        command = [sys.executable, "-c", "from tl_jacobian_scopes.app import build_app, launch; "
                   "from tl_jacobian_scopes.app.budget import Budget; "
                   f"launch(build_app(device='cpu', budget=Budget(cache_mb={args.cache_mb!r})), port={port})"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, Any] = {"what": __doc__.split("\n")[0], "budget": budget.describe(), "url": url,
                           "cache_mb": budget.cache_mb, "command": " ".join(["benchmarks/app_load.py", *sys.argv[1:]])}
    try:
        _wait_up(url, proc)
        clients = [Client(url, verbose=False) for _ in range(5)]
        model = tjs.load_default_model(device="cpu")
        def longest(word: str, tokens: int = budget.max_trace_tokens) -> str:
            """A prompt of ``tokens`` tokens (BOS included)."""
            ids = model.to_tokens(word * tokens, prepend_bos=False)[0][:tokens - 1]
            text = model.tokenizer.decode(ids)
            while model.to_tokens(text).shape[-1] > tokens:
                text = text[:-1]
            return str(text)

        clients[0].predict(PROMPTS[0], "temperature", api_name="/explain")  # warm up
        out["rss_mb_start"] = _rss_mb(proc.pid)

        # 1. the longest allowed jobs, and a short request from another session meanwhile
        jobs = {"fisher_exact": (longest("word "), "exact", 1),
                "fisher_rank_max": (longest("text ", budget.max_tokens), "rank", budget.max_rank)}
        out["longest_jobs"] = {}
        for name, (prompt, mode, rank) in jobs.items():
            started = time.perf_counter()
            job = clients[0].submit(prompt, "fisher", "", "", mode, rank, api_name="/explain")
            time.sleep(1.0)
            short_start = time.perf_counter()
            clients[1].predict(f"A short request from session two ({name})", "temperature", api_name="/explain")
            latency = time.perf_counter() - short_start
            try:
                job.result(timeout=600)
                outcome = "completed"
            except Exception as exc:  # the budget's max_seconds stops it with a message
                outcome = str(exc)[:300]
            out["longest_jobs"][name] = {
                "job": f"fisher {mode}{f' rank {rank}' if mode == 'rank' else ''}, "
                       f"{int(model.to_tokens(prompt).shape[-1])} tokens",
                "second_session_latency_s": latency, "job_s": time.perf_counter() - started, "outcome": outcome}
        out["second_session_latency_s"] = max(j["second_session_latency_s"] for j in out["longest_jobs"].values())

        # 2. a disconnecting page
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#tjs-run")
            page.fill("#tjs-prompt textarea", longest("page "))
            page.check("#tjs-mode input[value='exact']")
            page.click("#tjs-run")
            time.sleep(1.0)
            cpu0 = _cpu_s(proc.pid)
            time.sleep(2.0)
            out["disconnect_server_cpu_share_before_close"] = (_cpu_s(proc.pid) - cpu0) / 2.0
            cpu0 = _cpu_s(proc.pid)
            page.close()
            closed = time.perf_counter()
            busy_until = closed
            while time.perf_counter() - closed < 60:
                before, t0 = _cpu_s(proc.pid), time.perf_counter()
                time.sleep(0.5)
                if (_cpu_s(proc.pid) - before) / (time.perf_counter() - t0) > 0.3:
                    busy_until = time.perf_counter()
                elif time.perf_counter() - busy_until > 3:
                    break
            out["disconnect_busy_after_close_s"] = busy_until - closed
            out["disconnect_cpu_s_after_close"] = _cpu_s(proc.pid) - cpu0
            browser.close()

        # 3. flat memory and disk over many requests from 5 sessions
        samples: list[dict[str, float]] = []
        every = max(1, args.requests // 6)
        latencies: list[float] = []
        lock, counter = threading.Lock(), [0]

        def session(i: int) -> None:
            client = clients[i]
            while True:
                with lock:
                    k = counter[0]
                    if k >= args.requests:
                        return
                    counter[0] += 1
                prompt = f"{PROMPTS[k % len(PROMPTS)]} (request {k})"
                t0 = time.perf_counter()
                kind = k % 4
                if kind == 0:
                    client.predict(prompt, "fisher", api_name="/explain")
                elif kind == 1:
                    client.predict(prompt, 2, "temperature", api_name="/click")
                elif kind == 2:
                    client.predict(prompt, "semantic", "temperature", api_name="/compare")
                else:
                    client.predict(", ".join(str((k + j) % 10) for j in range(12)), "temperature",
                                   api_name="/forecast")
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if len(latencies) % every == 0:
                        samples.append({"requests": len(latencies), "rss_mb": _rss_mb(proc.pid),
                                        "disk_mb": _disk_mb(tmp)})

        threads = [threading.Thread(target=session, args=(i,)) for i in range(5)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        page_files = 0
        with sync_playwright() as p:  # meanwhile, a page writes files (the disk the app uses)
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#tjs-run")
            page.check("#tjs-scope input[value='temperature']")
            while any(t.is_alive() for t in threads) and time.perf_counter() - t0 < 1800:
                page.fill("#tjs-prompt textarea", f"{PROMPTS[page_files % len(PROMPTS)]} (page {page_files})")
                page.click("#tjs-run")
                page.wait_for_selector(f"#tjs-message [data-run='{page_files + 1}']", timeout=300_000)
                page.click("#tjs-files-button")
                page.wait_for_function(
                    "n => document.querySelector('#tjs-message').innerText.includes('Files for position')"
                    " && document.querySelectorAll('#tjs-downloads a[download]').length >= n", arg=2,
                    timeout=300_000)
                page_files += 1
            browser.close()
        for t in threads:
            t.join(timeout=1800)
        out["page_explanations_with_files"] = page_files
        out["requests"] = len(latencies)
        out["requests_wall_s"] = time.perf_counter() - t0
        out["request_latency_s"] = {"median": sorted(latencies)[len(latencies) // 2], "max": max(latencies)}
        out["samples"] = samples
        first, last = samples[0], samples[-1]
        out["rss_mb_at"] = {str(first["requests"]): first["rss_mb"], str(last["requests"]): last["rss_mb"]}
        out["disk_mb_at"] = {str(first["requests"]): first["disk_mb"], str(last["requests"]): last["disk_mb"]}
        out["disk_mb_max"] = max(s["disk_mb"] for s in samples)
        later = [s for s in samples if s["requests"] >= args.requests // 3]
        if len(later) >= 2:
            out["rss_growth_ratio_last_vs_third"] = later[-1]["rss_mb"] / later[0]["rss_mb"]
            out["disk_mb_last_minus_third"] = later[-1]["disk_mb"] - later[0]["disk_mb"]
        out["environment"] = environment(model)
        import gradio

        out["environment"]["packages"]["gradio"] = gradio.__version__
        out["machine"] = "shared 2-core machine, loaded by other agents"
    finally:
        # 4. SIGTERM (as a service manager stops it): the app removes what it wrote and exits 0
        proc.send_signal(signal.SIGTERM)
        stopped = time.perf_counter()
        try:
            out["sigterm_exit_status"] = proc.wait(30)
            out["sigterm_exit_s"] = time.perf_counter() - stopped
        except subprocess.TimeoutExpired:
            proc.kill()
            out["sigterm_exit_status"] = "did not exit within 30 s (killed)"
        out["disk_mb_after_shutdown"] = _disk_mb(tmp)
        out["files_left_after_shutdown"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))[:20]
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
