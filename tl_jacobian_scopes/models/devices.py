"""Devices as users name them: parsed and checked before any loading (the bottom of ``models``,
so that loading and placement both use it without importing each other)."""

from __future__ import annotations

from typing import Mapping, Optional, Union

import torch

from ..errors import DeviceError

Device = Union[str, torch.device, None]
DeviceMap = Union[str, Mapping[str, Union[int, str, torch.device]]]


def check_device(device: Device) -> Optional[torch.device]:
    """Parse ``device`` and make sure this PyTorch build and machine have it, before any loading.

    Raises:
        DeviceError: saying what to use instead.
    """
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(
            f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1' or 'mps' (or leave it unset for the default)."
        ) from exc
    kind = parsed.type
    if kind == "cpu":
        return parsed
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(
                f"Device {device!r} is not available ({build}; torch {torch.__version__}): "
                "use device='cpu' (--device cpu), or install a CUDA build of torch on a machine with a GPU."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(
                f"Device {device!r} does not exist: this machine has {count} CUDA device(s), "
                f"use 'cuda:0' to 'cuda:{count - 1}'."
            )
        return parsed
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"Device {device!r} is not available (MPS needs Apple silicon and a macOS build of torch): "
                "use device='cpu'."
            )
        return parsed
    module = getattr(torch, kind, None)
    is_available = getattr(module, "is_available", None)
    if kind != "meta" and callable(is_available) and is_available():
        return parsed
    raise DeviceError(f"Device {device!r} is not available here: use device='cpu' (or 'cuda' with a CUDA build of torch).")
