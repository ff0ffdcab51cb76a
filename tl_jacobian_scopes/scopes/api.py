"""The public entry points: one callable per scope or baseline, one signature for all.

Every method is called the same way (as in Captum)::

    result = method(model, prompt, target=None, *, contrast=None, position=None,
                    positions=None, prepend_bos=None, internals=False,
                    padding_side="right", batch_size=16, progress=None, **options)

and returns the same types (as in inseq), decided by the driver from the call's shape:
a :class:`ScopeResult` for one prompt, a :class:`ScopeBatch` (a list) for a batch, a
:class:`ScopeMatrix` (or a ScopeBatch of them) with ``positions=``. Arguments a method does
not take (``target`` for Temperature, ``internals`` for baselines) are refused with a clear error.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from typing import Any, Literal, Optional, Sequence, Union, overload

from jaxtyping import Int
from torch import Tensor

from ..errors import UnknownScopeError
from ..results.batch import ScopeBatch
from ..results.scope_matrix import ScopeMatrix
from ..results.scope_result import ScopeResult, set_declared_kinds
from .declarations import FISHER, SEMANTIC, TEMPERATURE, Method
from .driver import run

#: One prompt: text, or token ids as a list of ints.
SinglePrompt = Union[str, Sequence[int]]
#: A batch: a list of prompts.
BatchPrompt = Sequence[Union[str, Sequence[int], Int[Tensor, " pos"]]]
#: Token ids as a tensor: ``[pos]`` or ``[1, pos]`` is one prompt, ``[batch, pos]`` a batch, so
#: the result's type is known only at run time.
TokenTensor = Union[Int[Tensor, " pos"], Int[Tensor, "batch pos"]]
#: Many explained positions of each prompt.
Positions = Union[Literal["all"], Sequence[int]]
Token = Union[str, int, None]

_COMMON_DOC = """
    Common arguments (every scope and baseline):
        model: A TransformerLens ``HookedTransformer`` or ``TransformerBridge``. Hooks you
            attached (``model.add_hook``, e.g. a head ablation) fire in the scope's forward
            pass, so the scores explain the hooked model.
        prompt: Text, token ids (``[pos]`` or ``[1, pos]``), or a list of prompts / a
            ``[batch, pos]`` tensor (a batch: padded, one forward pass per ``batch_size``).
        target: (methods that explain one token) A single-token string such as ``" Paris"``
            (mind the leading space) or a token id; ``None`` for the model's top
            prediction; ``"next"`` for the token that follows the explained position in
            the text (teacher forcing; the top prediction at the last token). A list
            gives one per prompt (batch) or one per position (``positions=``).
        position: Explained position (default: the last token, i.e. the next-token
            prediction; negative counts from the end). For a batch: one int for all, or a
            list with one per prompt.
        positions: Explain many positions of each prompt (a list, or ``"all"``) with one
            forward pass: returns a :class:`ScopeMatrix` (positions x tokens).
        prepend_bos: Override the model's BOS setting when tokenizing strings.
        padding_side: ``"right"`` or ``"left"``: how a batch of unequal prompts is padded
            (results do not depend on it).
        batch_size: Prompts per forward pass for long lists.
        progress: A progress line (``None``: shown once the call has run 2 s, in a notebook
            or a terminal; ``True``: at once; ``False``: never; ``TQDM_DISABLE=1`` silences all).

    Returns:
        ScopeResult | ScopeBatch | ScopeMatrix: A ScopeResult for one prompt, a ScopeBatch
            (a list) of them for a batch, a ScopeMatrix with ``positions=`` (a ScopeBatch of
            them for a batch).
"""


class Scope:
    """A scope or baseline as a function: ``scope(model, prompt, **arguments)``.

    Calling it runs :func:`tl_jacobian_scopes.scopes.driver.run` with its
    :class:`~.declarations.Method`; ``scope.method`` holds the declaration.
    """

    def __init__(self, method: Method, name: str, doc: str):
        self.method = method
        self.__name__ = self.__qualname__ = name
        # The module that defines the scope (api.py, or evaluation/baselines.py): where
        # documentation tools and pickling-free introspection look it up.
        self.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
        common = inspect.cleandoc(_COMMON_DOC)
        if not method.targeted:  # drop the target paragraph for methods that take none
            start = common.index("    target:")
            common = common[:start] + common[common.index("    position:"):]
        self.__doc__ = inspect.cleandoc(doc) + "\n\n" + common
        self.__signature__ = _signature(method)

    @overload
    def __call__(self, model: Any, prompt: SinglePrompt, target: Token = None, *,
                 positions: None = None, **kwargs: Any) -> ScopeResult: ...

    @overload
    def __call__(self, model: Any, prompt: SinglePrompt, target: Token = None, *,
                 positions: Positions, **kwargs: Any) -> ScopeMatrix: ...

    @overload
    def __call__(self, model: Any, prompt: BatchPrompt, target: Union[Token, Sequence[Token]] = None, *,
                 positions: None = None, **kwargs: Any) -> ScopeBatch[ScopeResult]: ...

    @overload
    def __call__(self, model: Any, prompt: BatchPrompt, target: Union[Token, Sequence[Token]] = None, *,
                 positions: Positions, **kwargs: Any) -> ScopeBatch[ScopeMatrix]: ...

    @overload
    def __call__(self, model: Any, prompt: TokenTensor, target: Union[Token, Sequence[Token]] = None, *,
                 positions: Optional[Positions] = None, **kwargs: Any
                 ) -> Union[ScopeResult, ScopeMatrix, ScopeBatch[ScopeResult], ScopeBatch[ScopeMatrix]]: ...

    def __call__(self, model: Any, prompt: Any, target: Any = None, **kwargs: Any) -> Any:
        if target is not None:
            kwargs["target"] = target
        return run(self.method, model, prompt, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.method.label}: tl_jacobian_scopes.{self.__name__}>"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Pickled by name (for multiprocessing): the same registered Scope on the other side.
        return (_scope_named, (self.method.name,))


def _signature(method: Method) -> inspect.Signature:
    """The call signature a notebook's help shows: common arguments, then the method's options."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("prompt", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if method.targeted:
        params.append(inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
    if method.contrastive:
        params.append(inspect.Parameter("contrast", kw, default=None))
    params += [inspect.Parameter(name, kw, default=default) for name, default in
               (("position", None), ("positions", None), ("prepend_bos", None))]
    if method.internals:
        params.append(inspect.Parameter("internals", kw, default=False))
    params += [inspect.Parameter(name, kw, default=default) for name, default in
               (("padding_side", "right"), ("batch_size", 16), ("progress", None))]
    params += [inspect.Parameter(name, kw, default=default) for name, default in method.options.items()]
    return inspect.Signature(params)


semantic_scope = Scope(SEMANTIC, "semantic_scope", """
    Semantic Scope: which input tokens move the logit of ``target`` (``s_t = ‖J_tᵀ w_target‖``).

    With ``contrast=``, the logit difference target - contrast (``v = w_target - w_contrast``).
    ``internals=True`` adds per-layer, per-head, attention- and MLP-output maps from the same
    backward pass (``layer_scores``, ``head_scores``, ...).

    Examples:
        >>> import tl_jacobian_scopes as tjs
        >>> model = tjs.load_default_model()
        >>> r = tjs.semantic_scope(model, "The capital of France is", target=" Paris")
        >>> [t.token for t in r.top(3)]
        ['The', ' capital', ' France']
""")

temperature_scope = Scope(TEMPERATURE, "temperature_scope", """
    Temperature Scope: which tokens move the model's confidence ‖y‖ (``s_t = ‖J_tᵀ ŷ‖``).

    Since ``z = ‖y‖ · W ŷ``, ‖y‖ acts as an inverse temperature (``params["y_norm"]``).
    Needs the final norm's scale unfolded: a model loaded with ``fold_ln=True`` (or a bridge
    after ``enable_compatibility_mode()``) has constant ‖y‖ and is refused.

    Examples:
        >>> r = tjs.temperature_scope(model, "12,15,18,21,")
""")

fisher_scope = Scope(FISHER, "fisher_scope", """
    Fisher Scope: which tokens move the whole predictive distribution (``s_t = tr(J_tᵀ F J_t)``).

    ``F = Wᵀ(diag(p) - ppᵀ)W`` is the Fisher information of the next-token distribution
    pulled back to y. Scores are quadratic (a KL curvature): never on one colour scale with
    Semantic or Temperature scores. Options:

    - ``rank=k`` (default 1, as in the paper): the top-k eigen-directions of F (k probes).
    - ``rank=None``: the exact trace (``d_model`` probes, in memory-bounded chunks).
    - ``rank=None, samples=m``: an unbiased stochastic estimate of the exact trace from
      ``m`` random probes, with the top ``deflate`` (default 8) eigen-directions computed
      exactly; ``result.stderr`` holds each score's standard error; ``seed`` (int ≥ 0)
      makes it reproducible.

    ``params`` holds the rank, the top eigenvalues and the share of tr(F) captured.

    Examples:
        >>> r = tjs.fisher_scope(model, "The capital of France is", rank=None, samples=24)
""")

#: Every scope and baseline by name (baselines register themselves from ``evaluation``).
SCOPES: dict[str, Scope] = {s.method.name: s for s in (semantic_scope, temperature_scope, fisher_scope)}


def _declared_kind(name: str) -> Optional[str]:
    scope = SCOPES.get(name)
    return scope.method.score_kind if scope is not None else None


# A result saved before results stored their score kind gets it from its method's declaration.
set_declared_kinds(_declared_kind)


def register(scope: Scope) -> Scope:
    """Make a :class:`Scope` reachable by name through :func:`jacobian_scope`."""
    SCOPES[scope.method.name] = scope
    return scope


def resolve_scope(name: str) -> Scope:
    """The scope or baseline called ``name`` (case-insensitive).

    Raises:
        UnknownScopeError: naming the valid names and the closest match.
    """
    by_name = {**SCOPES, **{s.__name__: s for s in SCOPES.values()}}  # "ig" or "integrated_gradients"
    scope = by_name.get(str(name).lower())
    if scope is None:
        close = difflib.get_close_matches(str(name).lower(), by_name, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownScopeError(f"Unknown scope {name!r}: choose one of {sorted(SCOPES)}.{hint}")
    return scope


def _scope_named(name: str) -> Scope:
    import tl_jacobian_scopes  # noqa: F401  (registers the baselines)

    return SCOPES[name]


def jacobian_scope(model: Any, prompt: Any, scope: str = "fisher", **kwargs: Any) -> Any:
    """Run a scope or baseline by name (``"semantic"``, ``"temperature"``, ``"fisher"``, ``"gxi"``, ...).

    Examples:
        >>> r = tjs.jacobian_scope(model, "The capital of France is", "semantic", target=" Paris")
    """
    return resolve_scope(scope)(model, prompt, **kwargs)
