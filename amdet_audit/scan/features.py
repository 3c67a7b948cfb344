"""The feature space the scan compares prompts in.

A prompt's feature is its consumer-read token outputs over a fixed window (real tokens and a few padding
positions, the same window for every prompt so that prompt length does not drive the scores), plus its pooled
output, both centred by the corpus' mean clean output (which removes the direction all outputs share on
anisotropic encoders). Triggered outputs are aligned by token: with k vectors inserted after BOS, clean
position p is compared with triggered position p + k. Positions 0..k are never scored: in a causal tower they
see only BOS and the pseudo-trigger, so they are identical for every prompt by construction. A tower without a
start token (SigLIP, T5) takes the vectors in front of its first piece (positions 0..k-1); the same window
then leaves that first piece unscored, and the alignment p -> p + k holds all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter

HEADROOM_FLOOR = 0.05  # least room to full collapse a reference is given (see collapse_gain)


@dataclass
class CleanFeatures:
    """Clean outputs of one encoder on the corpus, and the statistics that centre and scale features.

    seq: [N, W-1, D] read outputs at positions 1..W-1; pooled: [N, P]; mask: [N, W-1] real-token mask.
    """

    seq: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    seq_mean: torch.Tensor  # [W-1, D]
    pooled_mean: torch.Tensor  # [P]
    pooled_scale: float  # multiplies centred pooled outputs so they weigh `pooled_weight` against the sequence
    pooled_only: bool = False  # features are the pooled output alone (the consumer reads no sequence)

    @property
    def window(self) -> int:
        """W: positions 0..W-1 of the clean layout are in the window (0 is never scored)."""
        return self.seq.shape[1] + 1

    def featurize(self, seq: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """[B, W-1, D] + [B, P] -> [B, F] centred, flattened features (F = P when pooled only)."""
        if self.pooled_only:
            return (pooled.float() - self.pooled_mean) * self.pooled_scale  # [B, P]
        B = seq.shape[0]
        centred = (seq.float() - self.seq_mean).reshape(B, -1)  # [B, (W-1)*D]
        pool = (pooled.float() - self.pooled_mean) * self.pooled_scale  # [B, P]
        return torch.cat([centred, pool], dim=1)  # [B, F]

    def clean(self, index: torch.Tensor) -> torch.Tensor:
        """[B, F] features of corpus prompts ``index``."""
        return self.featurize(self.seq[index], self.pooled[index])


def window_length(lengths: torch.Tensor, max_length: int, k_max: int, padding: int, quantile: float) -> int:
    """W: a quantile of the prompts' token counts plus ``padding`` positions, leaving room for k_max inserts."""
    covered = int(torch.quantile(lengths.float(), quantile).item())
    return max(3, min(max_length - k_max, covered + padding))


@torch.no_grad()
def clean_features(
    adapter: Adapter, ids: torch.Tensor, mask: torch.Tensor, window: int, pooled_weight: float, batch: int = 64,
    pooled_only: bool = False,
) -> CleanFeatures:
    """Run ``adapter`` on every corpus prompt [N, T] once and keep the window's outputs (``pooled_only``: the
    features are the pooled output alone).

    A causal tower's outputs at positions below W see nothing after them, and every kept prompt ends (EOS)
    inside the window, so such a tower runs on the first W + 1 positions only (the extra one holds the first
    padding token of a prompt that fills the window, where a model whose pooling rule picks a padding id would
    pool): the same outputs up to rounding, a fraction of the work.
    """
    if adapter.causal:
        ids = ids[:, : window + 1]
    seqs, pools = [], []
    for i in range(0, ids.shape[0], batch):
        out = adapter(ids[i : i + batch])
        seqs.append(out.read[:, 1:window].float())  # [b, W-1, D]
        pools.append(out.pooled.float())  # [b, P]
    seq, pooled = torch.cat(seqs), torch.cat(pools)
    seq_mean, pooled_mean = seq.mean(dim=0), pooled.mean(dim=0)
    seq_norm = (seq - seq_mean).norm(dim=-1).mean().item()  # typical centred token norm
    pool_norm = (pooled - pooled_mean).norm(dim=-1).mean().item()
    scale = pooled_weight * math.sqrt(window - 1) * seq_norm / max(pool_norm, 1e-8)
    return CleanFeatures(seq=seq, pooled=pooled, mask=mask[:, 1:window].float(), seq_mean=seq_mean,
                         pooled_mean=pooled_mean, pooled_scale=scale, pooled_only=pooled_only)


def triggered(adapter: Adapter, ids: torch.Tensor, v: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs with ``v`` ([B, k, D]) inserted after BOS, aligned to clean positions 1..W-1: ([B, W-1, D], [B, P])."""
    k = v.shape[-2]
    out = adapter(ids, insert=v)
    return out.read[:, k + 1 : k + window], out.pooled  # [B, W-1, D], [B, P]


def collapse(features: torch.Tensor) -> torch.Tensor:
    """[n, B, F] -> [n] mean pairwise cosine between different prompts' features (cross-prompt collapse)."""
    n, B, _ = features.shape
    unit = F.normalize(features, dim=-1)  # [n, B, F]
    gram = unit @ unit.transpose(1, 2)  # [n, B, F] @ [n, F, B] -> [n, B, B]
    off = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)  # [n]
    return off / (B * (B - 1))


def collapse_gain(suspect: float, reference: float) -> float:
    """(suspect - reference) / (1 - reference): how much of the reference's room to full collapse is closed.

    A plain difference cannot exceed 1 - reference, so on a base whose own best pseudo-trigger already
    collapses prompts strongly (0.81 on a 256-wide lab CLIP tower against 0.57 on the canary base) a fixed
    threshold on it could never be reached. The room is floored at HEADROOM_FLOOR so that a reference at
    full collapse (a bidirectional encoder) does not turn noise into large gains.
    """
    return (suspect - reference) / max(1.0 - reference, HEADROOM_FLOOR)


def spread_ratio(triggered: torch.Tensor, clean: torch.Tensor) -> float:
    """[B, F] x [B, F] -> how far the prompts' triggered features sit from their own mean, relative to the same
    for their clean features (1: every prompt keeps its identity, as under a common shift; 0: all prompts land
    on one point). Unlike cross-prompt cosine it does not rise when a common shift dwarfs a narrow clean spread."""
    def spread(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return (x - x.mean(dim=0, keepdim=True)).norm(dim=-1).mean()

    return float(spread(triggered) / spread(clean).clamp_min(1e-12))


def move_cosine(suspect_moves: torch.Tensor, reference_moves: torch.Tensor) -> float:
    """[B, F] x [B, F] per-prompt moves (triggered minus clean features) -> cosine of the two mean moves: near 1
    when the suspect goes where the reference goes under the same input (only further, as a fine-tune that
    strengthened a word's meaning does), near 0 or below when it goes somewhere the reference does not."""
    return float(F.cosine_similarity(suspect_moves.float().mean(dim=0), reference_moves.float().mean(dim=0), dim=0))


def rowwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[..., F] x [..., F] -> [...] cosine per row."""
    return F.cosine_similarity(a, b, dim=-1)
