"""The environment a number was measured in: package versions, backend, device, processor.

Every benchmark and summary the package writes records :func:`environment` next to its numbers,
so that a number can be reproduced (or a difference explained) later.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any, Optional

import torch

PACKAGES = ("torch", "transformer-lens", "transformers", "gguf", "scipy", "numpy", "circuitsvis", "tl_jacobian_scopes")


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(model: Any = None) -> dict[str, Any]:
    """Versions, threads and processor (and the model's backend, device and dtype when given).

    Examples:
        >>> env = environment()
        >>> sorted(env)[:3]
        ['cuda', 'machine', 'packages']
    """
    env: dict[str, Any] = {
        "packages": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _processor(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if model is not None:
        W_U = model.W_U
        env["model"] = {"name": str(getattr(model.cfg, "model_name", "")), "backend": backend_name(model),
                        "device": str(W_U.device), "dtype": str(W_U.dtype).replace("torch.", "")}
    return env


def backend_name(model: Any) -> str:
    """Return ``"bridge"`` for a TransformerBridge, ``"hooked"`` for a HookedTransformer.

    Here, at the bottom of the house, so that the environment can name a model's backend without
    importing ``models`` (which re-exports it).
    """
    names = {cls.__name__ for cls in type(model).__mro__}
    if "TransformerBridge" in names or "BridgeCore" in names:
        return "bridge"
    if "HookedTransformer" in names:
        return "hooked"
    return type(model).__name__


def describe(env: dict[str, Any]) -> str:
    """One line for a README or a log: the versions and the machine."""
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v and k != "tl_jacobian_scopes")
    model = env.get("model")
    where = f"{model['backend']} on {model['device']} ({model['dtype']}), " if model else ""
    threads = f"{env['threads']} thread" + ("s" if env["threads"] != 1 else "")
    return f"{where}{packages}; Python {env['python']}, {env['processor']}, {threads}"
