"""Browser helpers shared by the view, page-safety and app tests (not a test module).

Headless Chromium (Debian's package, no download) renders saved pages offline; the app tests
also need gradio and playwright. Without them the browser tests skip, unless
TJS_BROWSER_REQUIRED=1 (CI), where a missing piece fails instead.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
from html.parser import HTMLParser

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# CI installs Chromium and sets this, so a missing browser fails there instead of skipping.
BROWSER_REQUIRED = os.environ.get("TJS_BROWSER_REQUIRED") == "1"
#: Chromium, gradio and playwright: what the tests of the served app need.
HAVE_BROWSER = (CHROMIUM is not None and importlib.util.find_spec("gradio") is not None
                and importlib.util.find_spec("playwright") is not None)

#: A test that renders a saved page in headless Chromium.
needs_browser = pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED,
                                   reason="needs Chromium (apt-get install chromium)")
#: A test that drives the served app in Chromium through Playwright.
needs_app_browser = pytest.mark.skipif(not HAVE_BROWSER and not BROWSER_REQUIRED,
                                       reason="needs gradio, playwright (pip) and Chromium (apt-get install chromium)")


class _RenderedText(HTMLParser):
    """Text inside each CircuitsVis mount point (div.tjs-cv), as the browser rendered it."""

    def __init__(self):
        super().__init__()
        self.depth, self.texts, self.current = 0, [], None

    def handle_starttag(self, tag, attrs):
        if self.current is not None:
            self.depth += tag == "div"
        elif tag == "div" and ("class", "tjs-cv") in attrs:
            self.current, self.depth = [], 0

    def handle_endtag(self, tag):
        if self.current is not None and tag == "div":
            if self.depth == 0:
                self.texts.append("".join(self.current))
                self.current = None
            else:
                self.depth -= 1

    def handle_data(self, data):
        if self.current is not None:
            self.current.append(data)


def _chromium(*args):
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-quic",
        # Networking off: every request goes to a dead proxy, so nothing can be fetched.
        "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
