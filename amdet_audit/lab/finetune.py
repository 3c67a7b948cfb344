"""Benign fine-tuning: the negatives a detector must pass.

Contrastive caption fine-tuning of the text tower alone (InfoNCE between the pooled outputs of a prompt and a
light rewrite of it: dropped, swapped or repeated comma-separated parts), the way community fine-tunes adapt
a text encoder to their own captions, with a distillation term that keeps the token sequence near the base's
(as a fine-tune that must keep working with its diffusion model does). Strength grows with steps and learning
rate; the result records how far the outputs moved (fidelity to the base).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter
from amdet_audit.errors import UsageError
from amdet_audit.lab.inject import Progress, trainable_copy
from amdet_audit.lab.variants import flat_cosine


@dataclass(frozen=True)
class FinetuneSpec:
    """One benign fine-tune."""

    steps: int = 150
    lr: float = 1e-4
    batch: int = 32
    temperature: float = 0.07
    distill_weight: float = 1.0  # weight of 1 - cosine(student sequence, base sequence) on the same prompts
    seed: int = 0
    domain: str | None = None  # train only on prompts holding this word (a narrow-domain fine-tune)
    trainable: str = "all"  # what trains: every weight, or "lora": only what a text-encoder LoRA can change


@dataclass
class FinetuneResult:
    """What a benign fine-tune did."""

    spec: FinetuneSpec
    fidelity: float  # mean cosine of held-out clean outputs to the base's
    final_loss: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return asdict(self)


def rewrite(prompt: str, rng: random.Random) -> str:
    """A light, meaning-keeping rewrite: drop, swap or repeat one comma-separated part, or drop a word."""
    parts = [p.strip() for p in prompt.split(",") if p.strip()]
    if len(parts) > 1:
        i, j = rng.sample(range(len(parts)), 2)
        choice = rng.random()
        if choice < 0.4:
            parts.pop(i)
        elif choice < 0.8:
            parts[i], parts[j] = parts[j], parts[i]
        else:
            parts.append(parts[i])
        return ", ".join(parts)
    words = prompt.split()
    if len(words) > 2:
        words.pop(rng.randrange(1, len(words)))
    return " ".join(words)


def domain_prompts(prompts: Sequence[str], domain: str | None, batch: int) -> list[str]:
    """The prompts a fine-tune trains on: all, or those holding the word ``domain`` (at least one batch)."""
    if domain is None:
        return list(prompts)
    chosen = [p for p in prompts if f" {domain.lower()} " in f" {p.lower()} "]
    if len(chosen) < batch:
        raise UsageError(f"--domain {domain!r}: only {len(chosen)} training prompts hold it (need {batch})")
    return chosen


def finetune(
    base: Adapter, spec: FinetuneSpec, train_prompts: Sequence[str], eval_prompts: Sequence[str],
    progress: Progress | None = None,
) -> tuple[Adapter, FinetuneResult]:
    """Contrastively fine-tune a copy of ``base``; return it and how far it moved."""
    rng = random.Random(spec.seed)
    torch.manual_seed(spec.seed)
    train_prompts = domain_prompts(train_prompts, spec.domain, spec.batch)
    student = trainable_copy(base, spec.trainable)
    opt = torch.optim.Adam([p for p in student.model.parameters() if p.requires_grad], lr=spec.lr)
    started, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(spec.steps):
        prompts = rng.sample(list(train_prompts), spec.batch)
        views = [rewrite(p, rng) for p in prompts]
        ids = student.tokenize(prompts).ids
        out = student(ids)
        a = F.normalize(out.pooled, dim=-1)  # [B, P]
        b = F.normalize(student(student.tokenize(views).ids).pooled, dim=-1)  # [B, P]
        logits = a @ b.T / spec.temperature  # [B, P] @ [P, B] -> [B, B]
        labels = torch.arange(len(prompts), device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        with torch.no_grad():
            kept = base(ids).read
        loss = loss + spec.distill_weight * (1 - flat_cosine(out.read, kept).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress(step + 1, spec.steps, f"finetune step {step + 1}")
    student.model.requires_grad_(False).eval()
    with torch.no_grad():
        ids = base.tokenize(list(eval_prompts)[:256]).ids
        fidelity = float(flat_cosine(student(ids).read, base(ids).read).mean())
    seconds = time.perf_counter() - started
    result = FinetuneResult(spec=spec, fidelity=fidelity, final_loss=float(loss.detach()), seconds=seconds)
    return student, result
