"""Shared fixtures: the embedded default model, loaded once per test session.

Tiny random models and the independent references live in ``tiny_models.py`` (with the
``assert_close`` helper); only tests that need a real model's behaviour use ``default_model``.

Test files are named after the behaviour they test, and no test module imports another: shared
helpers live in helper modules (``tiny_models.py``, ``tiny_families.py``, ``architectures.py``,
``scope_fixtures.py`` for synthetic results, ``browser.py`` for headless Chromium, ``pages.py``
for hostile strings and the inert-page check, ``virtual_devices.py``) or here, as fixtures.
"""

import pytest

import tl_jacobian_scopes as tjs


@pytest.fixture(scope="session")
def default_model():
    """SmolLM2-135M-Instruct on the CPU, raw weights, on this TransformerLens's default backend.

    Shared by every test in the session: tests must not change its weights, hooks or mode
    (the scopes restore all three; a test that needs a modified model builds its own).
    """
    return tjs.load_default_model(device="cpu")

