"""Pseudo-trigger inversion: several candidates (lengths k, random starts, objective families) optimised
together with the encoders frozen; only the candidates take gradients.

Each inserted vector lives in token-embedding space with its norm capped at the largest real token's, so a
real trigger token is always a feasible solution and the search cannot win by sheer magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.terms import FAMILIES, Encoders, compute_terms, family_loss

Progress = Callable[[int, int, str], None]


@dataclass
class Candidate:
    """One optimised pseudo-trigger."""

    family: str
    k: int
    start: int
    vector: torch.Tensor  # [k, D] token-embedding space
    loss: float
    curve: list[float] = field(default_factory=list)


@dataclass
class Inversion:
    """All candidates of one run, and how the run went."""

    candidates: list[Candidate]
    steps: int
    stopped_early: bool
    diverged: bool

    def best(self, family: str) -> Candidate | None:
        """The lowest-loss candidate of ``family``."""
        pool = [c for c in self.candidates if c.family == family and math.isfinite(c.loss)]
        return min(pool, key=lambda c: c.loss) if pool else None


def token_radius(enc: Encoders, quantile: float) -> float:
    """The cap on an inserted vector's norm: a quantile of the token-embedding norms."""
    norms = enc.suspect.token_embedding_matrix().float().norm(dim=-1)  # [V]
    return float(torch.quantile(norms[torch.isfinite(norms)][:1_000_000], quantile))


def capped(u: torch.Tensor, radius: float) -> torch.Tensor:
    """[n, k, D] unit-scale parameters -> vectors with norm at most ``radius``."""
    norm = u.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n, k, 1]
    return u * (radius * torch.clamp(1.0 / norm, max=1.0))


def initial_vectors(enc: Encoders, n: int, k: int, radius: float, gen: torch.Generator,
                    seeded: torch.Tensor | None = None) -> torch.Tensor:
    """[n, k, D] starts: rows of real tokens scaled to unit radius, plus a little noise.

    Start i takes the tokens ``seeded`` when i is even and seeds are given (e.g. the tokens whose embeddings
    moved most from the reference); other starts take random tokens.
    """
    table = enc.suspect.token_embedding_matrix().float()
    rows = torch.randint(0, table.shape[0] - 2, (n, k), generator=gen)
    if seeded is not None:
        rows[0::2] = seeded[:k].unsqueeze(0)
    start = table[rows] / radius  # [n, k, D]
    noise = torch.randn(start.shape, generator=gen).to(start.device)  # drawn on the host: the same on any device
    return start + 0.1 * noise / math.sqrt(start.shape[-1])


def moved_tokens(enc: Encoders, top: int = 4) -> torch.Tensor | None:
    """Ids of the tokens whose embeddings moved most from the reference's (None without a reference)."""
    if enc.reference is None:
        return None
    moved = (enc.suspect.token_embedding_matrix().float() - enc.reference.token_embedding_matrix().float())
    return moved.norm(dim=-1).topk(top).indices


def invert(
    enc: Encoders, train_ids: torch.Tensor, config: ScanConfig, families: tuple[str, ...] = FAMILIES,
    progress: Progress | None = None,
) -> Inversion:
    """Optimise ``config.restarts`` candidates per (family, k) on the training prompts [N, L]."""
    if enc.reference is None:
        families = tuple(f for f in families if f == "collapse")  # divergence needs a reference
    gen = torch.Generator().manual_seed(config.seed)
    radius = token_radius(enc, config.radius_quantile)
    # one group per k: every family's restarts share one forward pass of each encoder
    fam_ids = torch.tensor([FAMILIES.index(f) for f in families for _ in range(config.restarts)],
                           device=enc.suspect.device)  # [n]
    seeds = moved_tokens(enc)
    params = [initial_vectors(enc, len(fam_ids), k, radius, gen, seeds).requires_grad_(True) for k in config.k_values]
    opt = torch.optim.Adam(params, lr=config.lr)
    curves: dict[tuple[str, int], list[float]] = {(f, k): [] for f in families for k in config.k_values}
    history: list[float] = []
    stopped_early, diverged, step = False, False, 0
    for step in range(1, config.steps + 1):
        index = torch.randperm(train_ids.shape[0], generator=gen)[: config.batch]
        total = torch.zeros(())
        for g, k in enumerate(config.k_values):
            v = capped(params[g], radius).to(enc.suspect.dtype)
            terms = compute_terms(enc, v, index, train_ids[index, : enc.span(k)], config.reference_gradients)
            loss = family_loss(terms, fam_ids, config).float()  # [families * restarts]
            for family in families:
                curves[(family, k)].append(float(loss[fam_ids == FAMILIES.index(family)].detach().mean()))
            total = total + loss.sum()
        if not torch.isfinite(total):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append(float(total.detach()))
        if progress:
            progress(step, config.steps, "inverting pseudo-trigger")
        if step >= config.min_steps and plateaued(history, config.patience_window, config.tolerance):
            stopped_early = True
            break
    candidates = final_candidates(enc, params, fam_ids, radius, train_ids, config, curves)
    return Inversion(candidates=candidates, steps=step, stopped_early=stopped_early, diverged=diverged)


def plateaued(history: list[float], window: int, tolerance: float) -> bool:
    """True when the mean loss of the last window improved on the window before by less than ``tolerance``."""
    if len(history) < 2 * window:
        return False
    last = sum(history[-window:]) / window
    before = sum(history[-2 * window : -window]) / window
    return before - last < tolerance * max(1.0, abs(before))


@torch.no_grad()
def final_candidates(enc, params, fam_ids, radius, train_ids, config, curves) -> list[Candidate]:
    """Evaluate every candidate's loss on one fixed batch of training prompts (4x the step batch)."""
    gen = torch.Generator().manual_seed(config.seed + 1)
    index = torch.randperm(train_ids.shape[0], generator=gen)[: 4 * config.batch]
    out = []
    for g, k in enumerate(config.k_values):
        v = capped(params[g].detach(), radius).to(enc.suspect.dtype)
        losses = family_loss(compute_terms(enc, v, index, train_ids[index, : enc.span(k)]), fam_ids, config)
        for i in range(v.shape[0]):
            family = FAMILIES[int(fam_ids[i])]
            out.append(Candidate(family=family, k=k, start=i % config.restarts, vector=v[i].float().cpu(),
                                 loss=float(losses[i]), curve=curves[(family, k)]))
    return out
