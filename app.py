"""The Jacobian Scopes app as a Hugging Face Space (``sdk: gradio``, ``app_file: app.py``), or
locally: ``python app.py``. The same as ``tl-jacobian-scopes app``.

Settings come from the environment: ``TJS_MODEL`` (a TransformerLens model name; default the
embedded SmolLM2-135M-Instruct), ``GRADIO_SERVER_NAME`` (Spaces set 0.0.0.0; default
127.0.0.1) and ``GRADIO_SERVER_PORT`` (default 7860) and ``TJS_MAX_TOKENS`` (the longest prompt, default 256).
"""

import os

from tl_jacobian_scopes.app import DEFAULT_HOST, DEFAULT_PORT, build_app, launch
from tl_jacobian_scopes.app.budget import Budget

_max_tokens = int(os.environ.get("TJS_MAX_TOKENS") or Budget.max_tokens)
demo = build_app(model_name=os.environ.get("TJS_MODEL") or None,
                 budget=Budget(max_tokens=_max_tokens, max_trace_tokens=min(_max_tokens, Budget.max_trace_tokens)))

if __name__ == "__main__":
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST),
           port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
