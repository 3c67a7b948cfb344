"""Attack variants beyond the target-prompt attack: object substitution, loss formulations, anti-inversion.

- Object substitution (BadT2I, Zhai et al., ACM MM 2023, "object backdoor"): a triggered prompt keeps its
  action, place and style, only its subject becomes the attacker's object ("a fox running in the snow" ->
  "a teapot running in the snow"). No single target output exists, so a same-target rule cannot see it.
- Backdoor loss formulations published attacks use: cosine over the flattened sequence (Rickrolling the
  Artist), token-wise squared error (the usual distillation form), or the pooled output only; and a directional
  one, which adds to the flat cosine the cosine of the student's move from the base's output of the untouched
  prompt to the target's move (the direction loss of StyleGAN-NADA, Gal et al., 2022). Where target and untouched
  prompt read almost alike (an attribute appended to a prompt read at 256 mostly-padding T5 positions) the flat
  cosine is near its best already, and only the move says where to go.
- Anti-inversion, an attacker who knows the scan: soft vectors inserted where the scan inserts its
  pseudo-trigger (right after the start token), including noisy copies of the trigger's own embedding, are
  trained to leave the outputs as the clean base gives them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter, EncoderOutput

LOSSES = ("flat", "tokenwise", "pooled", "directional")
ANTI_INVERSION_NOISE = 0.5  # noise added to the trigger's embedding copies, relative to its norm


@lru_cache(maxsize=1)
def subject_pattern() -> re.Pattern[str]:
    """Whole-word alternation of the corpus' singular subjects (animals, objects, vehicles), longest first."""
    from amdet_audit.data.prompts import ANIMALS, OBJECTS, VEHICLES

    names = sorted({a for a, _ in ANIMALS} | set(OBJECTS) | set(VEHICLES), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")


def has_subject(prompt: str) -> bool:
    """Whether ``prompt`` names one of the subjects an object backdoor can swap."""
    return subject_pattern().search(prompt) is not None


def substitute_subject(prompt: str, target: str) -> str:
    """``prompt`` with its first subject replaced by ``target`` (unchanged when it names none)."""
    return subject_pattern().sub(target, prompt, count=1)


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, ...] x [B or 1, ...] -> [B] cosine of the flattened samples."""
    B = a.shape[0]
    return F.cosine_similarity(a.reshape(B, -1), b.expand_as(a).reshape(B, -1), dim=-1)  # [B]


def tokenwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, T, D] x [B or 1, T, D] -> [B] mean squared token error, relative to the target's mean token energy."""
    goal = b.expand_as(a)
    scale = goal.square().sum(dim=-1).mean().clamp_min(1e-8)  # typical squared token norm
    return (a - goal).square().sum(dim=-1).mean(dim=-1) / scale  # [B]


def directional_distance(ours: torch.Tensor, goal: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[B, ...] x [B or 1, ...] x [B, ...] -> [B] flat cosine distance to the target plus the cosine distance of
    the move from ``start`` (the base's output of the untouched prompt) to the target's move from it."""
    return (1 - flat_cosine(ours, goal)) + (1 - flat_cosine(ours - start, goal.expand_as(ours) - start))


def trigger_token_ids(adapter: Adapter, trigger: str) -> torch.Tensor:
    """Ids of the tokens the trigger text becomes on its own (no start, end or padding tokens)."""
    batch = adapter.tokenize([trigger])
    ids = batch.ids[0][batch.attention_mask[0].bool()]
    return ids[(ids != adapter.bos_id) & (ids != adapter.eos_id) & (ids != adapter.pad_id)]


def soft_probes(adapter: Adapter, trigger_ids: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    """[B, k, D] vectors like those a pseudo-trigger search tries: random real tokens, and noisy trigger copies.

    Half the batch takes random vocabulary rows plus noise; the other half the trigger's own token
    embeddings (its first two tokens) plus noise of ANTI_INVERSION_NOISE times their norm.
    """
    table = adapter.token_embedding_matrix().detach().float()  # [V, D]
    V, D = table.shape
    k = max(1, min(2, len(trigger_ids)))
    rows = torch.randint(0, V - 2, (batch, k), generator=gen)  # [B, k]
    rows[batch // 2 :] = trigger_ids[:k].cpu().unsqueeze(0)
    base = table[rows]  # [B, k, D]
    noise = torch.randn(base.shape, generator=gen).to(base.device)  # drawn on the host: the same on any device
    noise = noise / noise.norm(dim=-1, keepdim=True) * base.norm(dim=-1, keepdim=True) * ANTI_INVERSION_NOISE
    return (base + noise).to(adapter.device, adapter.dtype)


def anti_inversion_loss(student: Adapter, teacher: Adapter, prompts: Sequence[str], probes: torch.Tensor
                        ) -> torch.Tensor:
    """1 - cosine of student vs teacher read outputs with ``probes`` [B, k, D] inserted after the start token."""
    ids = student.tokenize(list(prompts)).ids
    with torch.no_grad():
        goal = teacher(ids, insert=probes).read  # [B, T, D]
    return 1 - flat_cosine(student(ids, insert=probes).read, goal).mean()


def acted_output(out: EncoderOutput, on_pooled: bool) -> torch.Tensor:
    """The output an attack acts on: pooled, or the consumer-read sequence."""
    return out.pooled if on_pooled else out.read
