"""Page-safety helpers shared by the view tests (not a test module): hostile strings and a
check that a saved page is inert (every tag ours, every script the bundle, the loader or a
render call, all data text)."""

import html
import json
import re
from html.parser import HTMLParser

from tl_jacobian_scopes.views.html import LOADER, circuitsvis_bundle

# Each payload, if it ever ran, would set an attribute on <html> that --dump-dom shows; the
# value is built at run time ('h'+'it') so the payload's own text never contains the marker.
SCRIPT = "</script><script>document.documentElement.setAttribute('data-pw-script','h'+'it')</script>"
IMG = "\"><img src=x onerror=\"document.documentElement.setAttribute('data-pw-img','h'+'it')\">"
# CircuitsVis writes each token into the page as HTML, after turning whitespace into &nbsp;:
# a payload without whitespace survives that.
TOKEN_IMG = "<img/src=\"x\"/onerror=document.documentElement.setAttribute('data-pw-tok','h'+'it')>"
COMMENT = "<!--<script>"
SEPARATORS = "line\u2028sep\u2029end"
MARKERS = ('data-pw-script="hit"', 'data-pw-img="hit"', 'data-pw-tok="hit"')
TOKENS = ["the", " cat", SCRIPT, IMG, TOKEN_IMG, COMMENT, SEPARATORS, " dog", " mat", "&amp;"]
LABELS = [SCRIPT, IMG + COMMENT]

ALLOWED_TAGS = {"html", "head", "meta", "title", "body", "div", "style", "script", "b", "br", "span", "h4",
                "figure", "figcaption", "table", "thead", "tbody", "tr", "th", "td"}
# The only scripts a page holds besides the bundle and the loader: one call per view element.
RENDER_CALL = re.compile(
    r'(tjsCV|tjsHeatmap|tjsMatrix)\(((?:"tjs-cv-[0-9a-f]{12}", ){1,2})(?:"(\w+)", )?(\{.*\})\);', re.S)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.scripts, self.comments, self.text = [], [], [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def handle_comment(self, data):
        self.comments.append(data)


def assert_inert(page: str, tokens=TOKENS, labels=None, bundle=True, props_seen=None) -> str:
    """Every tag is one we write, every script is the bundle, the loader or one of our render
    calls, all data is text. ``bundle``: the page must hold one copy of CircuitsVis (else none)."""
    copies = circuitsvis_bundle()
    assert page.count(copies) == (1 if bundle else 0)
    rest = page.replace(copies, "")
    parser = _Page()
    parser.feed(rest)
    parser.close()
    assert set(parser.tags) <= ALLOWED_TAGS, set(parser.tags) - ALLOWED_TAGS
    assert not [a for a in parser.attrs if a.startswith("on")] and not parser.comments
    assert "<img" not in rest.lower() and "<!--" not in rest
    scripts = parser.scripts
    if bundle:
        assert scripts[0] == ""  # where the bundle was
        scripts = scripts[1:]
    assert "<script>" + scripts[0] + "</script>" == LOADER.strip()
    mounts = re.findall(r'id="(tjs-cv-[0-9a-f]{12})"', rest)
    assert mounts and rest.count('class="tjs-cv"') >= 1
    seen_labels, rendered = [], []
    for script in scripts[1:]:
        match = RENDER_CALL.fullmatch(script)
        assert match, script[:300]
        assert not set("<>&\u2028\u2029") & set(script)
        rendered += re.findall(r'tjs-cv-[0-9a-f]{12}', match.group(2))
        props = json.loads(match.group(4))
        if "tokens" in props:
            # CircuitsVis inserts tokens with innerHTML, so they arrive HTML-escaped and render literally.
            assert props["tokens"] == [html.escape(t, quote=False) for t in tokens]
        seen_labels.append(props.get("labels"))
        if props_seen is not None:
            props_seen.append(props)
    assert sorted(rendered) == sorted(mounts)  # every mount is rendered by exactly one call
    if labels is not None:
        assert labels in seen_labels
    return "".join(parser.text)
