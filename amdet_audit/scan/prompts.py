"""The scan's prompts: tokenized once, filtered to the scored window, split by index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from amdet_audit.encoders.base import Adapter
from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.features import window_length

TEST_EVERY = 5  # every 5th prompt (by index) is a held-out test prompt: an 80/20 split


@dataclass
class ScanPrompts:
    """Prompts whose tokens (BOS..EOS) fit the window W; ids/mask [N, T]; train/test index tensors."""

    prompts: list[str]
    ids: torch.Tensor
    mask: torch.Tensor
    window: int
    train: torch.Tensor
    test: torch.Tensor
    dropped: int  # prompts longer than the window, left out


def prepare_prompts(adapter: Adapter, config: ScanConfig, prompts: Sequence[str] | None = None) -> ScanPrompts:
    """Tokenize the corpus (default: the shipped one), fix W, keep prompts that fit, split train/test."""
    from amdet_audit.data.prompts import default_corpus

    chosen = list(prompts) if prompts is not None else list(default_corpus()[: config.prompts])
    batch = adapter.tokenize(chosen)
    ids, mask = batch.ids.cpu(), batch.attention_mask.cpu()
    lengths = mask.sum(dim=1)
    window = window_length(lengths, ids.shape[1], max(config.k_values), config.padding_positions,
                           config.window_quantile)
    keep = (lengths <= window).nonzero().squeeze(1)
    order = torch.arange(len(keep))
    return ScanPrompts(prompts=[chosen[i] for i in keep.tolist()], ids=ids[keep].to(adapter.device),
                       mask=mask[keep].to(adapter.device), window=window, train=order[order % TEST_EVERY != 0],
                       test=order[order % TEST_EVERY == 0], dropped=len(chosen) - len(keep))
