"""The scan's basic similarity measures: token assimilation A and token-wise similarity S.

Pure tensor functions: batched (no Python loop over the batch), differentiable, computed in at least float32
whatever the input dtype (bf16 hidden states are upcast before any sum). A mask selects the positions that
count (1 = counts); ``None`` selects all T positions, which on SD 1.x includes the EOS padding.

Differences from the reference (see docs/method.md):
- ``assimilation`` excludes the diagonal (a token's cosine with itself, always 1). The reference included it,
  which adds 1/T of bias towards 1 (with T = 77 about +0.013; more for short masked sequences).
- A sequence with fewer than 2 selected positions has no pair; its assimilation is defined as 0 (not NaN).
  A sequence with no selected position has token-wise similarity 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["assimilation", "tokenwise_similarity"]

_EPS = 1e-8  # norm floor: an all-zero token vector has cosine 0 with everything


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 when the input already is float64."""
    return torch.promote_types(dtype, torch.float32)


def _select(mask: torch.Tensor | None, B: int, T: int, like: torch.Tensor) -> torch.Tensor:
    """The mask as 0/1 floats of shape [B, T] (all ones when None); raises ValueError on a bad shape."""
    if mask is None:
        return torch.ones(B, T, dtype=like.dtype, device=like.device)
    if mask.shape != (B, T):
        raise ValueError(f"mask must have shape {(B, T)}, got {tuple(mask.shape)}")
    return (mask != 0).to(device=like.device, dtype=like.dtype)


def assimilation(states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pairwise cosine among the selected token outputs of each sequence, diagonal excluded.

    Args:
        states: [B, T, D] token outputs.
        mask: [B, T], nonzero where a position counts; None counts all T positions.

    Returns:
        [B] float32 (float64 for float64 input); 0 for sequences with fewer than 2 selected positions.
    """
    if states.dim() != 3:
        raise ValueError(f"states must be [B, T, D], got shape {tuple(states.shape)}")
    B, T, D = states.shape
    x = F.normalize(states.to(_work_dtype(states.dtype)), dim=-1, eps=_EPS)  # [B, T, D] unit rows
    m = _select(mask, B, T, x)  # [B, T]
    x = x * m.unsqueeze(-1)  # [B, T, D] unselected rows zeroed
    total = x.sum(dim=1).square().sum(dim=-1)  # [B]  |sum_i x_i|^2 = sum_{i,j} cos_ij over selected pairs
    diag = x.square().sum(dim=(1, 2))  # [B]  sum_i |x_i|^2 (1 per selected nonzero row)
    k = m.sum(dim=1)  # [B] selected positions
    pairs = k * (k - 1)  # [B] ordered pairs i != j
    return torch.where(pairs > 0, (total - diag) / pairs.clamp_min(1.0), torch.zeros_like(total))


def tokenwise_similarity(u: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the selected positions of cosine(u_t, y_t).

    Args:
        u, y: [B, T, D] two sets of token outputs for the same positions.
        mask: [B, T], nonzero where a position counts; None counts all T positions.

    Returns:
        [B] float32 (float64 for float64 input); 0 for sequences with no selected position.
    """
    if u.dim() != 3 or u.shape != y.shape:
        raise ValueError(f"u and y must both be [B, T, D], got {tuple(u.shape)} and {tuple(y.shape)}")
    B, T, D = u.shape
    dtype = _work_dtype(torch.promote_types(u.dtype, y.dtype))
    un = F.normalize(u.to(dtype), dim=-1, eps=_EPS)  # [B, T, D]
    yn = F.normalize(y.to(dtype), dim=-1, eps=_EPS)  # [B, T, D]
    cos = (un * yn).sum(dim=-1)  # [B, T]
    m = _select(mask, B, T, cos)  # [B, T]
    k = m.sum(dim=1)  # [B]
    return (cos * m).sum(dim=1) / k.clamp_min(1.0)  # [B]; 0 when k == 0 (numerator is 0 too)
