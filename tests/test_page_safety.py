"""Saved pages are inert: hostile strings in any field of a result render as text, never as markup.

Token strings, targets, labels, model names and parameters are data (a prompt, a word-level
tokenizer, an edited JSON file read by ``ScopeResult.from_dict``). Each test places payloads
in every field and checks the page (a) as a string, tag by tag, and (b) in a real browser.
"""

import html
import json
import re

import pytest

import tl_jacobian_scopes as tjs
from tl_jacobian_scopes.views import html as views_html
from scope_fixtures import make_result
from browser import BROWSER_REQUIRED, CHROMIUM, _chromium, _RenderedText
from pages import COMMENT, IMG, LABELS, MARKERS, SCRIPT, SEPARATORS, TOKEN_IMG, TOKENS, assert_inert
from tl_jacobian_scopes.views.html import ScopeView


def hostile_results():
    """Payloads in every string field, via from_dict (the edited-JSON path) and direct construction."""
    semantic = make_result(
        TOKENS, scope="semantic", target_str=SCRIPT, predicted_str=IMG, contrast_str=COMMENT + SEPARATORS,
        model_name=IMG + SCRIPT, params={SCRIPT: IMG, "note": COMMENT, "sep": SEPARATORS},
    )
    weird_scope = make_result(TOKENS, scope=SCRIPT + IMG, predicted_str=SCRIPT, model_name=COMMENT)
    reloaded = tjs.results.ScopeResult.from_dict(json.loads(json.dumps(semantic.to_dict())))
    matrix = tjs.results.ScopeMatrix([make_result(TOKENS, position=p, target_str=IMG + SCRIPT) for p in (3, 9)])
    return semantic, weird_scope, reloaded, matrix


def test_hostile_strings_stay_text_in_every_view(tmp_path):
    semantic, weird_scope, reloaded, matrix = hostile_results()
    for r in (semantic, reloaded):
        text = assert_inert(r.show().to_html())
        assert SCRIPT in text and IMG + SCRIPT in text  # shown, as text (target, model name)
        assert "data-pw-img" in text and "note=" in text  # the params line
        first_display = not views_html._notebook["bundle_sent"]
        assert_inert(r._repr_html_(), bundle=first_display)
        assert_inert(r.save_html(tmp_path / "r.html").read_text(encoding="utf-8"))
    text = assert_inert(weird_scope.show().to_html())
    assert re.search(r"<title>[^<]*&lt;/script&gt;", weird_scope.show().to_html())  # scope in the page title
    assert SCRIPT + IMG in text
    assert_inert(tjs.compare(semantic, weird_scope, labels=LABELS).to_html(), labels=LABELS)
    assert_inert(tjs.save_html(semantic, reloaded, path=tmp_path / "c.html").read_text(encoding="utf-8"))
    specs = []
    assert_inert(matrix.show().to_html(), props_seen=specs)
    assert [IMG + SCRIPT in row for row in specs[0]["rows"]] == [True, True]  # row labels name the targets
    assert_inert(ScopeView(semantic.show().sections, title=SCRIPT).to_html())


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED, reason="needs Chromium (apt-get install chromium)")
def test_hostile_page_runs_no_injected_code_in_a_real_browser(tmp_path):
    assert CHROMIUM, "Chromium is required here (TJS_BROWSER_REQUIRED=1)"
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    # Control: the same payloads pasted raw into a page do run in this browser, so their absence below means something.
    control = tmp_path / "control.html"
    control.write_text(
        f"<!DOCTYPE html><html><body><script>var a = '{SCRIPT}';</script><div>{IMG}</div><div>{TOKEN_IMG}</div>"
    )
    control_dom = _chromium(profile, "--dump-dom", control.as_uri()).stdout
    assert all(marker in control_dom for marker in MARKERS), control_dom[:500]

    semantic, weird_scope, _, matrix = hostile_results()
    view = tjs.compare(semantic, weird_scope, labels=LABELS)
    view.sections += matrix.show().sections
    view.title = SCRIPT
    path = view.save(tmp_path / "hostile.html")
    dom = _chromium(profile, "--dump-dom", path.as_uri()).stdout
    assert "tjs-view" in dom
    assert not any(marker in dom for marker in MARKERS), [m for m in MARKERS if m in dom]
    # The view still renders: every CircuitsVis mount is filled, hostile tokens shown as literal text.
    parser = _RenderedText()
    parser.feed(dom)
    assert len(parser.texts) == path.read_text(encoding="utf-8").count('class="tjs-cv"') >= 5
    for text in parser.texts:
        flat = text.replace("\xa0", " ")
        assert "cat" in flat and "dog" in flat and "mat" in flat, flat[:200]
        assert "</script><script>document" in flat and "<img src=x" in flat and TOKEN_IMG in flat, flat[:400]
        assert "&amp;" in flat and "<!--<script>" in flat
    # Heatmap labels (drawn by the page's script) are text too: a row label of the matrix view.
    row = html.escape(f"9:{TOKENS[9]}→{IMG + SCRIPT}", quote=False)
    assert f"<th>{row}</th>" in dom, dom[dom.find("tjs-hm"):][:500]
