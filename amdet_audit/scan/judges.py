"""The checks: a pseudo-trigger's effect measured on held-out prompts, as continuous scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from amdet_audit.scan.features import rowwise_cosine, spread_ratio
from amdet_audit.scan.objective import assimilation
from amdet_audit.scan.terms import Encoders, run_candidates

DRIFT_FLOOR = 0.05  # drift below this counts as this (a near-copy of the reference)
SAME_TARGET_COSINE = 0.8  # a triggered prompt "lands on the target" above this cosine to the common target


@dataclass
class Effect:
    """What one pseudo-trigger does on a set of held-out prompts (per-prompt arrays and their summaries)."""

    prompts: int
    collapse: float  # mean pairwise cosine of the suspect's triggered features across prompts
    same_target_rate: float  # share of prompts within SAME_TARGET_COSINE of the mean triggered feature
    assimilation: float  # mean token assimilation of triggered outputs
    clean_assimilation: float  # the same on the clean outputs of the same prompts (baseline)
    clean_similarity: float  # triggered vs own clean feature
    anchor_similarity: float | None = None  # triggered suspect vs triggered reference feature
    reference_collapse: float | None = None  # the reference's collapse under the same pseudo-trigger
    divergence: float | None = None  # consistent part of the suspect-vs-reference shift, relative to output size
    divergence_consistency: float | None = None  # mean pairwise cosine of per-prompt shifts
    drift: float | None = None  # how far the suspect's clean outputs are from the reference's, relative to size
    relative_divergence: float | None = None  # divergence / max(drift, DRIFT_FLOOR): beyond ordinary drift
    spread_ratio: float | None = None  # triggered vs clean spread of the suspect's prompts (features.spread_ratio)
    reference_spread_ratio: float | None = None  # the same for the reference under the same pseudo-trigger
    per_prompt: dict[str, list[float]] = field(default_factory=dict)
    target: torch.Tensor | None = None  # [F] mean triggered feature (centred)


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """[N, F] -> mean cosine over ordered pairs of different rows."""
    N = x.shape[0]
    unit = F.normalize(x.float(), dim=-1)  # [N, F]
    total = unit.sum(dim=0).square().sum()  # sum_{i,j} cos_ij
    return float((total - N) / (N * (N - 1)))


@torch.no_grad()
def measure(enc: Encoders, v: torch.Tensor, index: torch.Tensor, ids: torch.Tensor, batch: int = 64) -> Effect:
    """Effect of v [k, D] on corpus prompts ``index`` (ids [N, T])."""
    k = v.shape[0]
    sus, clean_f, assim, clean_assim, ref, ref_clean = [], [], [], [], [], []
    for i in range(0, len(index), batch):
        idx = index[i : i + batch]
        chunk = ids[idx, : enc.span(k)]
        seq, pooled = run_candidates(enc.suspect, chunk, v.unsqueeze(0).to(enc.suspect.dtype), enc.window)
        mask = enc.suspect_clean.mask[idx]
        sus.append(enc.suspect_clean.featurize(seq, pooled))
        clean_f.append(enc.suspect_clean.clean(idx))
        assim.append(assimilation(seq, mask))
        clean_assim.append(assimilation(enc.suspect_clean.seq[idx], mask))
        if enc.reference is not None and enc.reference_clean is not None:
            r_seq, r_pooled = run_candidates(enc.reference, chunk, v.unsqueeze(0).to(enc.reference.dtype), enc.window)
            ref.append(enc.reference_clean.featurize(r_seq, r_pooled))
            ref_clean.append(enc.reference_clean.clean(idx))
    feats, clean = torch.cat(sus), torch.cat(clean_f)  # [N, F]
    target = feats.mean(dim=0)  # [F]
    to_target = rowwise_cosine(feats, target.unsqueeze(0))  # [N]
    a = torch.cat(assim)
    effect = Effect(prompts=len(index), collapse=mean_pairwise_cosine(feats),
                    same_target_rate=float((to_target > SAME_TARGET_COSINE).float().mean()),
                    assimilation=float(a.mean()), clean_assimilation=float(torch.cat(clean_assim).mean()),
                    clean_similarity=float(rowwise_cosine(feats, clean).mean()), target=target,
                    spread_ratio=spread_ratio(feats, clean),
                    per_prompt={"to_target": to_target.tolist(), "assimilation": a.tolist()})
    if ref:
        r_feats, r_clean = torch.cat(ref), torch.cat(ref_clean)
        shift = (feats - clean) - (r_feats - r_clean)  # [N, F]
        anchor = rowwise_cosine(feats, r_feats)  # [N]
        effect.anchor_similarity = float(anchor.mean())
        effect.reference_collapse = mean_pairwise_cosine(r_feats)
        effect.divergence = float(shift.mean(dim=0).norm() / clean.norm(dim=-1).mean())
        effect.drift = float((clean - r_clean).norm(dim=-1).mean() / clean.norm(dim=-1).mean())
        effect.relative_divergence = effect.divergence / max(effect.drift, DRIFT_FLOOR)
        effect.divergence_consistency = mean_pairwise_cosine(shift)
        effect.reference_spread_ratio = spread_ratio(r_feats, r_clean)
        effect.per_prompt["anchor"] = anchor.tolist()
    return effect
