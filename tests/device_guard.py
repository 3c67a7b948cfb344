"""Catch host/accelerator tensor mixes on a machine without an accelerator.

On CPU every tensor lives on the same device, so code that would fail on a GPU ("Expected all tensors to be on
the same device") passes. :class:`DeviceGuard` follows each tensor's would-be device instead: model weights and
tensors made with an explicit ``device=`` (or moved with ``.to(device)``) count as on the accelerator, tensors made
without one (or moved with ``.cpu()`` / ``.to("cpu")``) as on the host, results inherit from their inputs, and an
operation that mixes the two raises :class:`DeviceMix`, following CUDA's rules: host scalars (0-dim) mix freely,
host index tensors may index an accelerator tensor, and ``copy_`` / basic-slice assignment copy across devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

MARK = "_guard_on_accelerator"

#: methods that move or read out a tensor, whose result's side is decided by the call, not by the inputs
_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda}
#: calls whose tensor arguments may sit on either side (CUDA copies across devices for them)
_ACROSS = {torch.Tensor.copy_, torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.numpy, torch.Tensor.__repr__,
           torch.Tensor.__format__, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
           torch.Tensor.__index__, torch.Tensor.__len__, torch.Tensor.__iter__, torch.Tensor.__hash__,
           torch._has_compatible_shallow_copy_type}  # the last: Module.to comparing a weight with its moved copy


class DeviceMix(RuntimeError):
    """An operation mixed accelerator and host tensors (it would fail on a GPU)."""


def mark(tensors: Iterable[torch.Tensor]) -> None:
    """Count these tensors (a model's weights and buffers) as living on the accelerator."""
    for t in tensors:
        setattr(t, MARK, True)


def mark_module(module: torch.nn.Module) -> None:
    """Count a module's parameters and buffers as on the accelerator."""
    mark(module.parameters())
    mark(module.buffers())


def on_accelerator(t: torch.Tensor) -> bool:
    """Whether ``t`` counts as on the accelerator (a model weight does, also a copy of one: copies lose marks)."""
    return bool(getattr(t, MARK, isinstance(t, torch.nn.Parameter)))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _side_of_target(target: Any) -> bool | None:
    """The side a ``.to(...)`` argument sends a tensor to (None: not a device)."""
    if isinstance(target, torch.Tensor):
        return on_accelerator(target)
    if isinstance(target, str) and target.split(":")[0] in {"cpu", "cuda", "mps", "meta"}:
        return not target.startswith("cpu")  # a literal "cpu" is a move to the host
    if isinstance(target, torch.device):
        return True  # a device object comes from the scan's device (cpu here stands for the accelerator)
    return None


def _checked(name: str, tensors: list[torch.Tensor]) -> bool:
    """The side of an operation's result; raises when non-scalar host tensors meet accelerator ones."""
    sides = {on_accelerator(t) for t in tensors if t.dim() > 0 or on_accelerator(t)}
    if len(sides) > 1:
        shapes = [(tuple(t.shape), "accelerator" if on_accelerator(t) else "host") for t in tensors]
        raise DeviceMix(f"{name} mixes accelerator and host tensors: {shapes}")
    return any(on_accelerator(t) for t in tensors)


class DeviceGuard(TorchFunctionMode):
    """Within ``with DeviceGuard():``, raise :class:`DeviceMix` where a GPU would refuse mixed devices."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
        out = func(*args, **kwargs)
        if func in _MOVES:
            if func is torch.Tensor.cpu:
                side = False
            elif func is torch.Tensor.cuda:
                side = True
            else:
                targets = [_side_of_target(a) for a in (*args[1:], kwargs.get("device"), kwargs.get("other"))]
                chosen = [s for s in targets if s is not None]
                side = chosen[0] if chosen else on_accelerator(args[0])
            if out is args[0] and side != on_accelerator(args[0]):
                out = out.view_as(out)  # a real move makes a new tensor; here the input itself came back
        elif func in _ACROSS:
            return out
        elif name.endswith("__set__"):  # ``weight.data = moved`` (Module.to / .cpu): the weight moves with it
            target, value = args[0], args[-1]
            if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
                setattr(target, MARK, on_accelerator(value))
            return out
        elif func is torch.Tensor.__getitem__:
            side = on_accelerator(args[0])  # host indices may index an accelerator tensor
        elif func is torch.Tensor.__setitem__:
            index, value = args[1], args[2]
            if isinstance(value, torch.Tensor) and any(True for _ in _tensors(index)):
                _checked(name, [args[0], value])  # advanced assignment: values on the target's device
            return out
        else:
            inputs = list(_tensors(args)) + list(_tensors(kwargs))
            if func is torch.tensor:  # copies values (even accelerator scalars) into a new host tensor
                side = bool(_side_of_target(kwargs.get("device")))
            elif not inputs:  # a factory: on the accelerator only when told a device
                side = _side_of_target(kwargs.get("device")) or False
            elif "device" in kwargs and kwargs["device"] is not None:  # e.g. zeros_like(x, device=...)
                side = bool(_side_of_target(kwargs["device"]))
            else:
                side = _checked(name, inputs)
        for t in _tensors(out):
            try:
                setattr(t, MARK, side)
            except (AttributeError, RuntimeError):  # a few internal results refuse attributes
                pass
        return out
