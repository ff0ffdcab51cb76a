"""Explain a generation: let the model generate, then explain every token it produced."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import OptionError, PromptError
from ..models.access import ModelAccess
from ..models.inputs import prepare_tokens
from ..results.generation import GenerationResult
from .api import Scope, resolve_scope
from .driver import NEXT, check_positive_int, is_batch, plan_run, warn_tokenization

#: ``generate()`` arguments that explain_generation sets itself.
_OWN = ("input", "max_new_tokens", "return_type", "output_logits", "return_cache", "return_input_tokens")
_SAMPLING = ("temperature", "top_k", "top_p")
#: Arguments that would explain something other than each generated token.
_REFUSED = ("target", "position", "positions")


def explain_generation(
    model: Any,
    prompt: Any,
    max_new_tokens: int = 10,
    scope: Union[str, Scope] = "semantic",
    *,
    prepend_bos: Optional[bool] = None,
    stop_at_eos: bool = True,
    generate_kwargs: Optional[Mapping[str, Any]] = None,
    **scope_options: Any,
) -> GenerationResult:
    """Generate a continuation of ``prompt``, then explain each generated token with one scope call.

    The model generates greedily (``do_sample=False``) unless ``generate_kwargs`` asks for
    sampling (``temperature``, ``top_k`` or ``top_p`` there turn ``do_sample`` on unless it is
    given). The generated token ids are kept as they are and explained as they are: text is
    never re-tokenized (``model.to_string(ids)`` fed back as a string can tokenize differently,
    e.g. 18 generated ``"-"`` tokens become 3; pass ids, or use this function). Generation runs
    under ``torch.no_grad()`` with the model frozen (its mode, hooks and grad flags, and your
    grad mode, are as before afterwards); then every generated token is explained by one
    ``positions=`` computation of ``scope``: the Semantic scope explains the token actually
    generated at each step (``target="next"``); Fisher and Temperature explain the distribution
    it was drawn from (their ``target_str`` is that distribution's top token, which is the
    generated one under greedy decoding).

    With ``stop_at_eos=True`` (as ``model.generate``), generation stops after the model emits
    its end-of-sequence token; that token is kept and explained like the others.

    Args:
        model: A TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompt: One prompt: text or token ids (``[pos]`` or ``[1, pos]``).
        max_new_tokens: How many tokens to generate at most (≥ 1).
        scope: A scope name (``"semantic"``, ``"fisher"``, ``"temperature"``, any registered
            name) or a :class:`Scope`.
        prepend_bos: For text prompts: whether to prepend BOS (default: the model's setting).
        stop_at_eos: Stop once the model emits its end-of-sequence token.
        generate_kwargs: More ``model.generate`` arguments (``do_sample``, ``temperature``,
            ``top_k``, ``top_p``, ``use_past_kv_cache``, ``eos_token_id``, ...).
        **scope_options: The scope's own options (``rank=None``, ``contrast=" Rome"``,
            ``internals=True``, ``batch_size``, ``progress``, ...).

    Returns:
        A :class:`GenerationResult`: the scope's :class:`ScopeMatrix` (one row per generated
        token), the prompt length and the generated ids.

    Raises:
        PromptError: A batch of prompts, or no room in the context for ``max_new_tokens``.
        OptionError: A bad ``max_new_tokens``, an argument explain_generation sets itself, or
            a scope option the scope does not take (all checked before generating).
        UnknownScopeError: An unknown scope name.

    Examples:
        >>> import tl_jacobian_scopes as tjs
        >>> model = tjs.load_default_model()
        >>> g = tjs.explain_generation(model, "The capital of France is", max_new_tokens=5)
        >>> g.generated_str_tokens[0]
        ' Paris'
        >>> view = g.show()
    """
    access = ModelAccess(model)
    method_scope = scope if isinstance(scope, Scope) else resolve_scope(scope)
    check_positive_int("max_new_tokens", max_new_tokens)
    refused = [k for k in _REFUSED if k in scope_options]
    if refused:
        raise OptionError(f"explain_generation sets {refused[0]}= itself (each generated token is explained at "
                          "the position that predicted it): leave it out.")
    settings = dict(generate_kwargs or {})
    own = [k for k in settings if k in _OWN]
    if own:
        raise OptionError(f"generate_kwargs may not set {own[0]!r}: explain_generation sets it (max_new_tokens= "
                          "is its own argument).")
    if is_batch(prompt):
        raise PromptError("explain_generation explains one prompt: call it once per prompt.")
    tokens = prepare_tokens(access, prompt, prepend_bos)
    warn_tokenization(access, [prompt], batch=False)
    n_prompt = tokens.shape[1]
    if n_prompt + max_new_tokens > access.n_ctx:
        raise PromptError(
            f"The prompt has {n_prompt} tokens and the model's context holds {access.n_ctx}: use "
            f"max_new_tokens ≤ {access.n_ctx - n_prompt}, or a shorter prompt."
        )
    # The scope call's own checks, on the prompt's last position, so that a misspelt option
    # fails now rather than after the generation it would waste.
    first_call: dict[str, Any] = {"target": NEXT} if method_scope.method.targeted else {}
    plan_run(method_scope.method, model, tokens, positions=[n_prompt - 1], **first_call, **scope_options)
    settings.setdefault("do_sample", any(k in settings for k in _SAMPLING))
    # TransformerLens 4.3's bridge generates wrong tokens with its KV cache on the default model
    # (" Paris-------" where a full forward pass gives " Paris.\n\n"), so the bridge recomputes
    # the prefix at every step; HookedTransformer's cache is exact.
    use_cache = access.backend != "bridge"
    settings = {"stop_at_eos": stop_at_eos, "use_past_kv_cache": use_cache, "verbose": False, **settings}
    with access.frozen(), torch.no_grad(), warnings.catch_warnings():
        # The bridge's generate passes HF's deprecated `past_key_values`: its FutureWarning is
        # about TransformerLens's code, not the user's, and would fill every notebook cell.
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        out = model.generate(tokens, max_new_tokens=max_new_tokens, return_type="tokens", **settings)
    sequence = out[0].detach().to(tokens.device).clone()  # HookedTransformer.generate returns inference tensors
    generated = [int(t) for t in sequence[n_prompt:]]
    if not generated or not torch.equal(sequence[:n_prompt], tokens[0]):
        raise RuntimeError("model.generate returned no continuation of the prompt's ids")  # a broken generate()
    positions = list(range(n_prompt - 1, n_prompt - 1 + len(generated)))
    if method_scope.method.targeted:
        scope_options["target"] = "next"
    matrix = method_scope(model, sequence, positions=positions, **scope_options)
    record = {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
              for k, v in {"max_new_tokens": max_new_tokens, **settings}.items() if k != "verbose"}
    return GenerationResult(matrix, n_prompt, generated, record)
