"""The lab's optimisers: torch's Adam and AdamW, with the fused kernel where the parameters' device has one.

One fused kernel per step instead of a dozen element-wise passes over every weight: measured on the canary
tower (CLIP's 49,408-token embedding trains with the rest), 2 CPU cores, one thread, a training step took
0.54 s with the default kernels and 0.43 s fused. Same update rule; the results differ only by rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

#: devices whose Adam and AdamW have a fused kernel in every torch the package supports (>= 2.6)
FUSED_DEVICES = ("cpu", "cuda")


def _fusable(params: list[Any]) -> bool:
    """Whether every parameter (or every parameter of every group) is a floating tensor on a fused device."""
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return all(t.is_floating_point() and t.device.type in FUSED_DEVICES for t in tensors)


def adamw(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, lr, **options)``, fused where it can be."""
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, fused=_fusable(params) or None, **options)


def adam(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr, **options)``, fused where it can be."""
    params = list(params)
    return torch.optim.Adam(params, lr=lr, fused=_fusable(params) or None, **options)
