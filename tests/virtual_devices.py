"""Simulated CUDA devices on a CPU-only machine: every tensor carries the device it would be on.

:class:`VirtualDevices` is a ``TorchFunctionMode``. While it is active, ``tensor.device``
answers the simulated device; a device argument (``.to(d)``, ``.cpu()``, ``device=d``) sets it
while the data stays on the CPU; and an operation whose tensor operands sit on two different
simulated devices raises the error CUDA raises ("Expected all tensors to be on the same
device"), with the same exceptions CUDA makes (0-dim CPU tensors mix with anything; CPU index
tensors may index a GPU tensor). A result lives where its operands do. Backward passes run
in C++ and are not seen op by op: ``torch.autograd.grad`` is checked as autograd checks it
(each grad_output on its output's device) and each gradient is placed on its input's device.

:func:`dispatch` splits a Hugging Face model the way Accelerate's ``device_map`` dispatch does:
each mapped module's weights on its device, and a hook on it (Accelerate's own hook API) that
moves the module's inputs there (the root model's outputs go back to the input's device).

Values are exactly those of the CPU run, so a scope's scores under the simulation can be
compared with ``torch.equal`` to the same model's scores without it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

CPU = torch.device("cpu")
_DEVICE_GET = torch.Tensor.device.__get__
_IS_CUDA_GET = torch.Tensor.is_cuda.__get__
_DATA_SET = torch.Tensor.data.__set__
_INDEXING = (torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put)


def cuda(index: int) -> torch.device:
    return torch.device("cuda", index)


class VirtualDevices(TorchFunctionMode):
    """Track the simulated device of every tensor; refuse operations that mix devices.

    Attributes:
        moves: ``(from, to)`` for every move between two different simulated devices.
    """

    def __init__(self) -> None:
        super().__init__()
        self.where: WeakIdKeyDictionary = WeakIdKeyDictionary()
        #: Latest device by storage: ``nn.Parameter(t)`` wraps ``t``'s storage in a new tensor
        #: without a torch call the mode sees; the parameter is where ``t`` was.
        self.storage: dict[int, torch.device] = {}
        self.moves: list[tuple[torch.device, torch.device]] = []

    def device_of(self, tensor: torch.Tensor) -> torch.device:
        found = self.where.get(tensor)
        if found is None and isinstance(tensor, torch.nn.Parameter):
            found = self.storage.get(tensor.untyped_storage().data_ptr())
        return found or CPU

    def label(self, tensor: torch.Tensor, device: torch.device) -> None:
        self.where[tensor] = device
        pointer = tensor.untyped_storage().data_ptr()
        if pointer:
            self.storage[pointer] = device

    def place(self, module: torch.nn.Module, device: torch.device) -> None:
        """Put a module's weights and buffers on ``device``."""
        for t in list(module.parameters()) + list(module.buffers()):
            self.label(t, device)

    # ---- the mode ---------------------------------------------------------------------------

    def _tensors(self, tree: Any) -> list[torch.Tensor]:
        return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]

    def _common(self, func: Any, tensors: list[torch.Tensor]) -> Optional[torch.device]:
        """The one device of ``tensors`` (0-dim CPU tensors mix with any), or raise like CUDA."""
        found = {self.device_of(t) for t in tensors if not (t.dim() == 0 and self.device_of(t) == CPU)}
        if len(found) > 1:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{sorted(map(str, found))}! (in {getattr(func, '__name__', func)})"
            )
        return found.pop() if found else CPU

    def _target(self, device: Any) -> torch.device:
        return cuda(device) if isinstance(device, int) else torch.device(device)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = dict(kwargs or {})
        if func == _DEVICE_GET:
            return self.device_of(args[0])
        if func == _IS_CUDA_GET:
            return self.device_of(args[0]).type == "cuda"
        if func == _DATA_SET:  # param.data = t: the parameter now lives where t does
            func(*args, **kwargs)
            self.label(args[0], self.device_of(args[1]))
            return None
        if func is torch._has_compatible_shallow_copy_type:  # nn.Module.to asks it across devices
            return func(*args, **kwargs)
        if func is torch.autograd.grad:
            return self._grad(func, args, kwargs)
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and self.device_of(args[0]) != CPU:
            raise TypeError(f"can't convert {self.device_of(args[0])} device type tensor to numpy. Use Tensor.cpu() first.")
        if func in (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda):
            return self._move(func, args, kwargs)
        if kwargs.get("device") is not None:  # factories: zeros(..., device=d), zeros_like(x, device=d)
            target = self._target(kwargs.pop("device"))
        elif func in _INDEXING:
            target = self.device_of(args[0])
            for index in self._tensors(args[1]):
                if self.device_of(index) not in (target, CPU):
                    raise RuntimeError(f"indices should be either on cpu or on the same device as the indexed tensor ({target})")
            self._common(func, [args[0]] + self._tensors(args[2:]) + self._tensors(kwargs))
        elif func is torch.Tensor.copy_:  # copies across devices; the destination stays put
            target = self.device_of(args[0])
        else:
            target = self._common(func, self._tensors(args) + self._tensors(kwargs))
        generator = kwargs.get("generator")
        if generator is not None and getattr(generator, "virtual_device", CPU) != target:
            raise RuntimeError(f"Expected a '{target}' device type for generator but found "
                               f"'{getattr(generator, 'virtual_device', CPU)}'")
        out = func(*args, **kwargs)
        for t in self._tensors(out):
            self.label(t, target)
        return out

    def _move(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """``.to(...)``, ``.cpu()``, ``.cuda()``: the data stays on the CPU; a move between two
        simulated devices makes a new tensor (as on GPUs), so the source keeps its device."""
        source, rest = args[0], list(args[1:])
        target, dtype, memory_format = self.device_of(source), None, None
        copy = bool(kwargs.pop("copy", False))
        if func is torch.Tensor.cpu:
            target = CPU
        elif func is torch.Tensor.cuda:
            target = cuda(int(rest[0]) if rest else 0)
        elif rest and isinstance(rest[0], torch.Tensor):  # .to(other): other's device and dtype
            target, dtype = self.device_of(rest[0]), rest[0].dtype
        else:
            device, dtype, _, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
            target = target if device is None else device
        moved = target != self.device_of(source)
        if moved:
            self.moves.append((self.device_of(source), target))
        options: dict[str, Any] = {"copy": moved or copy}
        if dtype is not None:
            options["dtype"] = dtype
        if memory_format is not None:
            options["memory_format"] = memory_format
        out = torch.Tensor.to(source, **options)
        self.label(out, target)
        return out

    def _grad(self, func: Any, args: tuple, kwargs: dict) -> Any:
        names = ("outputs", "inputs", "grad_outputs")
        bound = dict(zip(names, args), **kwargs)
        outputs, inputs = bound["outputs"], bound["inputs"]
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        inputs_list = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        grad_outputs = bound.get("grad_outputs")
        if grad_outputs is not None:
            grads_list = [grad_outputs] if isinstance(grad_outputs, torch.Tensor) else list(grad_outputs)
            for i, (out, g) in enumerate(zip(outputs, grads_list)):
                if g is not None and self.device_of(g) != self.device_of(out):
                    raise RuntimeError(
                        f"invalid gradient at index {i} - expected device {self.device_of(out)} but got {self.device_of(g)}"
                    )
        result = func(*args, **kwargs)
        for g, x in zip(result, inputs_list):
            if g is not None:
                self.label(g, self.device_of(x))
        return result


class VirtualGenerator(torch.Generator):
    """``torch.Generator(device=d)`` for a simulated ``d`` (monkeypatch it over ``torch.Generator``):
    a CPU generator that remembers ``d``; drawing with it onto another device is refused, as on GPUs."""

    def __new__(cls, device: Any = "cpu") -> "VirtualGenerator":
        generator = super().__new__(cls, device="cpu")
        generator.virtual_device = cuda(device) if isinstance(device, int) else torch.device(device)
        return generator

    def __init__(self, device: Any = "cpu") -> None:
        pass


def dispatch(mode: VirtualDevices, hf_model: torch.nn.Module, device_map: dict[str, torch.device]) -> None:
    """Split ``hf_model`` as Accelerate's ``dispatch_model`` does, on simulated devices.

    Each mapped module's weights go to its device and an Accelerate hook moves the module's
    inputs there before it runs (the root model's outputs return to the input's device).
    ``hf_model.hf_device_map`` is set, as ``from_pretrained(device_map=...)`` sets it.
    """
    from accelerate.hooks import ModelHook, add_hook_to_module
    from accelerate.utils import find_device, send_to_device

    class MoveInputs(ModelHook):  # AlignDevicesHook without its weight placement (done by mode.place)
        def __init__(self, device: torch.device, io_same_device: bool = False) -> None:
            self.device, self.io_same_device, self.input_device = device, io_same_device, None

        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
            if self.io_same_device:
                self.input_device = find_device([args, kwargs])
            return send_to_device(args, self.device), send_to_device(kwargs, self.device)

        def post_forward(self, module: Any, output: Any) -> Any:
            return send_to_device(output, self.input_device) if self.io_same_device else output

    for name, device in device_map.items():
        module = hf_model.get_submodule(name)
        mode.place(module, device)
        add_hook_to_module(module, MoveInputs(device))
    first = next(iter(device_map.values()))
    add_hook_to_module(hf_model, MoveInputs(first, io_same_device=True), append=True)
    hf_model.hf_device_map = {name: device.index for name, device in device_map.items()}
