"""Models larger than one device: TransformerLens's multi-device placement, checked before loading.

A `HookedTransformer` (TransformerLens 3.x) is split over ``n_devices`` GPUs as a pipeline:
the embeddings and the first blocks on the first GPU, ..., the last blocks, the final norm
and the unembedding on the last (:func:`hooked_layout`); its forward pass moves the residual
stream to each block's GPU. A `TransformerBridge` is split by Hugging Face Accelerate
(``device_map=``, or ``n_devices=``, which TransformerLens turns into a balanced map), whose
hooks move activations between modules. Either way the scopes read each tensor on the
device of the module that made it and move what they combine (probes, ``W_U`` products).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

from ..errors import DeviceError, OptionError
from .devices import DeviceMap, check_device
#: Accelerate's whole-model placement strategies.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_n_devices(n_devices: Any) -> int:
    if n_devices is None:
        return 1
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise OptionError(f"n_devices must be a positive int (the number of GPUs to split the model over), got {n_devices!r}.")
    return n_devices


def _check_device_map(device_map: Any) -> None:
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise OptionError(
                f"device_map={device_map!r} is not an Accelerate strategy: use one of {list(DEVICE_MAP_STRATEGIES)}, "
                "or a dict from module name to device (e.g. {'model.layers.0': 0, ...})."
            )
        return
    if not isinstance(device_map, Mapping) or not device_map:
        raise OptionError(f"device_map must be a strategy name or a non-empty dict of module name -> device, got {device_map!r}.")
    kinds = set()
    for module, target in device_map.items():
        name = str(target).lower()
        if name in ("disk", "meta"):
            raise DeviceError(
                f"device_map[{module!r}]={target!r}: the scopes need every weight in memory (offloaded weights "
                "are placeholders the TransformerBridge's components read directly): map it to a GPU or to 'cpu'."
            )
        parsed = check_device(torch.device("cuda", target) if isinstance(target, int) else target)
        assert parsed is not None
        kinds.add(parsed.type)
    if "cpu" in kinds and len(kinds) > 1:
        raise DeviceError(
            "device_map mixes 'cpu' with GPUs, which Accelerate implements as CPU offload (placeholder weights "
            "the TransformerBridge cannot run): map every module to a GPU, or every module to 'cpu'."
        )


def check_placement(
    device: Any, n_devices: Any, device_map: Any, backend: Optional[str]
) -> tuple[int, Optional[torch.device]]:
    """Check a multi-device request before anything is loaded.

    Args:
        device: The (single) device, or the first GPU of an ``n_devices`` split.
        n_devices: How many GPUs to split the model over (``None`` or 1: one device).
        device_map: An Accelerate device map for a TransformerBridge.
        backend: The resolved backend, ``"bridge"`` or ``"hooked"``.

    Returns:
        ``(n_devices, first)``: the validated count and the first GPU of a split (else ``None``).

    Raises:
        OptionError: conflicting or malformed arguments, naming which to keep.
        DeviceError: devices this machine does not have, naming the count it has.

    Examples:
        >>> check_placement(None, 2, None, "bridge")  # needs 2 GPUs (DeviceError elsewhere)  # doctest: +SKIP
        (2, device(type='cuda', index=0))
    """
    n = _check_n_devices(n_devices)
    parsed = check_device(device)
    if device_map is not None:
        if n > 1:
            raise OptionError("Pass either n_devices= or device_map=, not both (n_devices=N is a balanced map over N GPUs).")
        if device is not None:
            raise OptionError("Pass either device= (one device) or device_map= (modules over devices), not both.")
        if backend == "hooked":
            raise OptionError(
                "device_map= places a TransformerBridge's modules (Accelerate); a HookedTransformer is split with "
                "n_devices=: pass n_devices=N, or backend='bridge'."
            )
        _check_device_map(device_map)
        return 1, None
    if n == 1:
        return 1, None
    if parsed is not None and parsed.type != "cuda":
        raise DeviceError(f"n_devices={n} splits the model over CUDA GPUs: leave device= out or pass 'cuda' (got {device!r}).")
    first = parsed.index or 0 if parsed is not None else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if first + n > count:
        fix = (f"use n_devices={count - first} or fewer" if count - first > 1
               else "leave n_devices out to load on one device" + (" (device='cpu')" if count == 0 else ""))
        raise DeviceError(
            f"n_devices={n} needs {n} CUDA GPUs (cuda:{first} to cuda:{first + n - 1}), but this machine has "
            f"{count}: {fix}."
        )
    if backend == "bridge" and first != 0:
        raise OptionError(
            f"A TransformerBridge split with n_devices= uses cuda:0 to cuda:{n - 1}: leave device= out, or pass "
            "device_map= to choose the GPUs."
        )
    return n, torch.device("cuda", first)


def check_loaded_placement(hf_model: Any) -> None:
    """Refuse a model that Accelerate offloaded because it did not fit (a strategy such as
    ``"auto"``, or ``n_devices=``, puts what the GPUs cannot hold on ``"cpu"`` or ``"disk"``).

    Raises:
        DeviceError: a module on ``"disk"``/``"meta"``, or on ``"cpu"`` next to GPUs, naming them.

    Examples:
        >>> check_loaded_placement(torch.nn.Linear(1, 1))  # no hf_device_map: one device
    """
    placed = getattr(hf_model, "hf_device_map", None) or {}
    names = {m: str(d).lower() for m, d in placed.items()}
    types = {"cuda" if isinstance(d, int) else ("offload" if names[m] in ("disk", "meta") else torch.device(d).type)
             for m, d in placed.items()}
    offloaded = [m for m, d in names.items() if d in ("disk", "meta") or (d == "cpu" and len(types) > 1)]
    if offloaded:
        raise DeviceError(
            f"The model does not fit on the GPUs it was given: Accelerate offloaded {offloaded[:3]}"
            f"{' ...' if len(offloaded) > 3 else ''} to {sorted({names[m] for m in offloaded})}, placeholder weights "
            "the scopes cannot read: split it over more GPUs (n_devices=), or pass a device_map with every module on a GPU."
        )


def hf_placement_kwargs(n_devices: int, device_map: Optional[DeviceMap]) -> dict[str, Any]:
    """The ``from_pretrained`` arguments that place a Hugging Face model (``{}``: one device).

    ``n_devices > 1`` becomes TransformerLens's own choice: Accelerate's ``"balanced"`` map
    over the first ``n_devices`` GPUs, each capped at its free memory.

    Examples:
        >>> hf_placement_kwargs(1, {"": "cpu"})
        {'device_map': {'': 'cpu'}}
    """
    if device_map is not None:
        return {"device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map}
    if n_devices <= 1:
        return {}
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    resolved, max_memory = resolve_device_map(n_devices, None, None)
    return {"device_map": resolved, "max_memory": max_memory}


def hooked_layout(n_layers: int, n_devices: int, first: torch.device) -> dict[str, torch.device]:
    """Where each top-level module of a split `HookedTransformer` goes, by module name.

    The pipeline TransformerLens's forward pass expects: block ``i`` on
    ``get_device_for_block_index(i)`` (``first + i * n_devices // n_layers``), the embeddings
    with block 0 (tokens go there) and the final norm and unembedding with the last block
    (the residual stream arrives there).

    Examples:
        >>> hooked_layout(4, 2, torch.device("cuda", 0))["unembed"]
        device(type='cuda', index=1)
    """
    base = first.index or 0

    def block_device(i: int) -> torch.device:
        return torch.device(first.type, base + (i * n_devices) // n_layers)

    layout = {f"blocks.{i}": block_device(i) for i in range(n_layers)}
    for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed"):
        layout[name] = block_device(0)
    for name in ("ln_final", "unembed"):
        layout[name] = block_device(n_layers - 1)
    return layout


def place_hooked(model: Any, n_devices: int, first: torch.device) -> Any:
    """Split a `HookedTransformer` over ``n_devices`` GPUs (:func:`hooked_layout`), in place.

    ``cfg.device`` and ``cfg.n_devices`` are set so that the forward pass moves the residual
    stream to each block's device.

    Examples:
        >>> model = place_hooked(hooked_model_on_cpu, 2, torch.device("cuda", 0))  # needs 2 GPUs  # doctest: +SKIP
    """
    model.cfg.device = str(first)
    model.cfg.n_devices = n_devices
    for name, device in hooked_layout(model.cfg.n_layers, n_devices, first).items():
        module = getattr(model, name, None) if "." not in name else model.get_submodule(name)
        if module is not None:
            module.to(device)
    return model
