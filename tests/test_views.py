"""Views: self-contained HTML rendered by a real browser offline, notebook display, static figures."""

import os
import re
import shutil
import socket
import subprocess
from html.parser import HTMLParser

import pytest

import tl_jacobian_scopes as tjs
from tiny_models import tiny_model

PROMPT = "the cat sat on the mat and the dog ran to the"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# CI installs Chromium and sets this, so a missing browser fails there instead of skipping.
BROWSER_REQUIRED = os.environ.get("TJS_BROWSER_REQUIRED") == "1"


@pytest.fixture(scope="module")
def results():
    model, _ = tiny_model("llama", "bridge")
    return (
        tjs.fisher_scope(model, PROMPT, internals=True),
        tjs.semantic_scope(model, PROMPT, target="dog", contrast="cat"),
        tjs.temperature_scope(model, PROMPT),
    )


def test_html_is_self_contained(results, tmp_path):
    fisher, semantic, temperature = results
    path = tjs.save_html([fisher, semantic, temperature], tmp_path / "cmp.html")
    text = path.read_text()
    assert "unpkg.com" not in text and not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert text.count("var CircuitsVis") == 1  # the bundle is inlined once per page
    assert "each column is divided by its own maximum" in text  # scales are stated
    single = fisher.save_html(tmp_path / "one.html").read_text()
    assert "Layer × position" in single and "Layer × head" in single and "scaled: sensitivity" in single


def test_notebook_display_never_touches_the_network(results, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a view tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fisher, semantic, _ = results
    html = fisher._repr_html_()
    assert "CircuitsVis.render" in html and "ColoredTokens" in html
    assert "ColoredTokensMulti" in tjs.compare(fisher, semantic)._repr_html_()


def test_compare_refuses_different_tokens(results):
    model, _ = tiny_model("gpt2", "bridge")
    other = tjs.fisher_scope(model, "the dog ran")
    with pytest.raises(tjs.ScopeError, match="same tokens"):
        tjs.compare(results[0], other)


def test_static_figure(results, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    fisher, semantic, _ = results
    for r, name in ((fisher, "f.png"), (semantic, "s.png")):
        path = r.save_png(tmp_path / name)
        image = Image.open(path).convert("L")
        assert image.size[0] > 300 and len(set(image.getdata())) > 20  # not blank


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


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason="needs Chromium (apt-get install chromium)")
def test_views_render_in_a_real_browser_offline(results, tmp_path):
    assert CHROMIUM, "Chromium is required here (TJS_BROWSER_REQUIRED=1)"
    from PIL import Image

    fisher, semantic, temperature = results
    path = tjs.save_html([fisher, semantic, temperature], tmp_path / "view.html")
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = _chromium(profile, "--dump-dom", path.as_uri()).stdout
    parser = _RenderedText()
    parser.feed(dom)
    # Every CircuitsVis mount was filled by React, and holds the prompt's tokens.
    expected_mounts = len(re.findall(r'class="tjs-cv"', path.read_text()))
    assert len(parser.texts) == expected_mounts >= 5
    for text in parser.texts:
        flat = text.replace("\xa0", " ")
        assert "cat" in flat and "mat" in flat and "dog" in flat, flat[:200]
    assert "Layer:" in "".join(parser.texts) and "Head:" in "".join(parser.texts)

    shot = tmp_path / "shot.png"
    _chromium(profile, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri())
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # rendered content, not a blank page
    non_white = sum(count for count, rgb in colours if sum(rgb) < 720)
    assert non_white > 0.01 * image.size[0] * image.size[1]
