"""The objective's terms for a batch of pseudo-trigger candidates on a batch of prompts.

Shared by the inversion (with gradients), the checks and the loss landscape (without).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amdet_audit.encoders.base import Adapter
from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.features import CleanFeatures, collapse, rowwise_cosine, triggered
from amdet_audit.scan.objective import assimilation

FAMILIES = ("collapse", "divergence")


@dataclass
class Encoders:
    """The suspect, the optional reference, and their clean corpus features (window W shared)."""

    suspect: Adapter
    suspect_clean: CleanFeatures
    reference: Adapter | None = None
    reference_clean: CleanFeatures | None = None

    @property
    def window(self) -> int:
        """W, the scored window (see features.py)."""
        return self.suspect_clean.window

    def span(self, k: int) -> int | None:
        """How many positions the encoders must run on with k inserted vectors: W + k when later positions cannot
        change the scored ones (a causal tower, or a tower that masks its padding), else all (None)."""
        suspect = self.suspect
        return self.window + k if suspect.causal or not getattr(suspect, "attends_padding", True) else None


@dataclass
class Terms:
    """Per-candidate values [n] (``features`` keeps the suspect's triggered features [n, B, F])."""

    collapse: torch.Tensor
    reference_collapse: torch.Tensor | None
    assimilation: torch.Tensor
    clean_similarity: torch.Tensor
    anchor_similarity: torch.Tensor | None
    divergence: torch.Tensor | None
    divergence_consistency: torch.Tensor | None
    features: torch.Tensor


def run_candidates(adapter: Adapter, ids: torch.Tensor, v: torch.Tensor, window: int):
    """Every candidate on every prompt: v [n, k, D], ids [B, L] -> ([n*B, W-1, D], [n*B, P])."""
    n, B = v.shape[0], ids.shape[0]
    ids_rep = ids.repeat(n, 1)  # [n*B, L]
    v_rep = v.repeat_interleave(B, dim=0)  # [n*B, k, D]
    return triggered(adapter, ids_rep, v_rep, window)


def compute_terms(enc: Encoders, v: torch.Tensor, index: torch.Tensor, ids: torch.Tensor,
                  reference_gradients: bool = True) -> Terms:
    """All terms for candidates v [n, k, D] on corpus prompts ``index`` (their ids [B, L], cut to W + k).

    reference_gradients: False runs the reference without autograd (its outputs act as fixed targets).
    """
    n, B = v.shape[0], ids.shape[0]
    seq, pooled = run_candidates(enc.suspect, ids, v, enc.window)
    feats = enc.suspect_clean.featurize(seq, pooled).view(n, B, -1)  # [n, B, F]
    clean = enc.suspect_clean.clean(index)  # [B, F]
    mask = enc.suspect_clean.mask[index].repeat(n, 1)  # [n*B, W-1]
    assim = assimilation(seq, mask).view(n, B).mean(dim=1)  # [n]
    terms = Terms(collapse=collapse(feats), reference_collapse=None, assimilation=assim,
                  clean_similarity=rowwise_cosine(feats, clean.unsqueeze(0)).mean(dim=1),
                  anchor_similarity=None, divergence=None, divergence_consistency=None, features=feats)
    if enc.reference is not None and enc.reference_clean is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and reference_gradients):
            r_seq, r_pooled = run_candidates(enc.reference, ids, v, enc.window)
        r_feats = enc.reference_clean.featurize(r_seq, r_pooled).view(n, B, -1)  # [n, B, F]
        r_clean = enc.reference_clean.clean(index)  # [B, F]
        shift = (feats - clean) - (r_feats - r_clean)  # [n, B, F] what v does to the suspect, not the reference
        scale = clean.norm(dim=-1).mean()  # typical centred clean feature norm
        terms.anchor_similarity = rowwise_cosine(feats, r_feats).mean(dim=1)  # [n]
        terms.reference_collapse = collapse(r_feats)  # [n]
        terms.divergence = shift.mean(dim=1).norm(dim=-1) / scale  # [n] consistent part of the shift
        terms.divergence_consistency = collapse(shift)  # [n]
    return terms


def family_loss(terms: Terms, family: torch.Tensor, config: ScanConfig) -> torch.Tensor:
    """[n] loss per candidate; ``family`` [n] is 0 for collapse candidates, 1 for divergence candidates.

    With ``config.differential`` (bidirectional towers) the collapse family maximises the suspect's collapse
    minus the reference's under the same vector: in a bidirectional tower one strong inserted vector can take
    over every position of any model, backdoored or not, so only collapse the reference does not share counts.
    """
    if config.differential and terms.reference_collapse is not None:
        loss = -(terms.collapse - terms.reference_collapse)
    else:
        loss = -(terms.collapse + config.assimilation_weight * terms.assimilation)
    loss = loss + config.clean_weight * terms.clean_similarity
    if terms.anchor_similarity is not None and terms.divergence is not None:
        loss = loss + config.anchor_weight * terms.anchor_similarity
        loss = torch.where(family == 1, -terms.divergence, loss)
    return loss
