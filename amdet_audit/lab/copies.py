"""Benign look-alikes made without training: precision copies and weight merges.

Both are common on model hubs (an fp16 re-upload of a fine-tune, a merge of two fine-tunes) and both change
every weight a little, so a detector that reads weight change as suspicion must pass them.
"""

from __future__ import annotations

import copy

import torch

from amdet_audit.encoders.base import Adapter
from amdet_audit.errors import UsageError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def precision_copy(model: Adapter, dtype: str) -> Adapter:
    """A copy of ``model`` with its weights stored in ``dtype`` (fp16 or bf16)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return copy.deepcopy(model).to(model.device, DTYPES[dtype])


def merge(first: Adapter, second: Adapter, weight: float) -> Adapter:
    """A copy of ``first`` whose weights are ``(1 - weight) * first + weight * second`` (same architecture)."""
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"--weight {weight} must lie in [0, 1]")
    a, b = first.model.state_dict(), second.model.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise UsageError("the two models to merge differ in architecture (tensor names or shapes)")
    merged = copy.deepcopy(first)
    mixed = {k: (a[k].float() * (1 - weight) + b[k].float() * weight).to(a[k].dtype)
             if a[k].is_floating_point() else a[k] for k in a}
    merged.model.load_state_dict(mixed)
    return merged
