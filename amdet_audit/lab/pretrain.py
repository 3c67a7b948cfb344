"""Make a tiny CLIP text tower behave like a pretrained encoder, and measure how much it does.

A randomly initialised tiny CLIP tower is nothing like a real encoder: clean prompts already score token
assimilation ~0.8 and every output shares one dominant direction (docs/method.md, last section), so a scan
run on it proves nothing. A short pretraining as a causal language model on the prompt corpus fixes that:
the tower's own forward (with its causal mask) predicts the next token through logits tied to the token
embedding, restricted to the few thousand ids the corpus uses.

- :func:`make_tiny_clip` builds a small ``CLIPTextModel`` with CLIP's real vocabulary and special ids.
- :func:`pretrain_causal_lm` trains it in place (seconds on 2 CPU cores).
- :func:`clean_profile` reports clean-prompt assimilation and cross-prompt output similarity, the numbers
  that must be reported beside any canary or test base.

Measured (default size 128 wide x 4 layers, default settings, trained on the 3,200-prompt train split of the
default corpus, profiled on 500 test-split prompts; 2 cores, torch 2.13 CPU, quiet machine):

    =============================  ======  ========================  =============================
    profile                        random  400 steps (40 s, 2 thr.)  same + ``summary_weight=1``
    =============================  ======  ========================  =============================
    assimilation_all               0.825   0.592                     0.600
    assimilation_real              0.789   0.167                     0.205
    cross_prompt_cosine            0.781   0.531                     0.454
    cross_prompt_cosine_real       0.558   0.193                     0.207
    =============================  ======  ========================  =============================

Real tokens diversify quickly; EOS padding does not. Padding positions are never a training target (and in
a causal model no loss reaches them), so their outputs stay close to the first EOS output (cosine ~0.95)
and to each other (assimilation among padding positions ~0.85 whatever the steps, learning rate, size or
position-embedding scale tried). With about 50 of 77 positions padding, ``assimilation_all`` stays near 0.6;
CLIP-L's padding is also near-identical (docs/method.md), so scores over all positions are padding-dominated
there too. Two threads are only faster on an idle machine: with the other core busy, use one thread
(67 s for the same run) -- two contending threads took over 400 s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel

from amdet_audit.scan.objective import assimilation
from amdet_audit.tokenization import BOS_ID, EOS_ID, VOCAB_SIZE

__all__ = ["clean_profile", "make_tiny_clip", "pretrain_causal_lm"]

log = logging.getLogger(__name__)

WARMUP_SHARE = 0.05  # share of steps with linear learning-rate warm-up, then cosine decay to 0
WEIGHT_DECAY = 0.01  # AdamW decay on weight matrices only (not embeddings, norms, biases)
GRAD_CLIP = 1.0  # max global gradient norm
BUCKET_POOL = 8  # batches per length-sorting pool (cuts padding compute ~2x, keeps batches mixed)


def make_tiny_clip(
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 512,
    max_positions: int = 77,
    seed: int = 0,
    pad_token_id: int = EOS_ID,
) -> CLIPTextModel:
    """A randomly initialised CLIP text tower with CLIP's vocabulary (49,408 ids, BOS 49406, EOS 49407).

    Deterministic for ``seed``; the caller's global RNG state is left untouched. Returned in eval mode.
    """
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    return model.eval()


def _tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SD-style tokenization: ids and attention mask, both [N, max_length] (padded, truncated)."""
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _param_groups(model: CLIPTextModel) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on 2-D weights of linear layers; none on embeddings, norms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() == 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over WARMUP_SHARE of the steps, then cosine decay to 0."""
    warmup = max(1, int(WARMUP_SHARE * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _batch_loss(
    model: CLIPTextModel, ids: torch.Tensor, mask: torch.Tensor, summary_weight: float = 0.0
) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch, logits tied to the model's (restricted) input embedding.

    ids: [B, L] token ids already in the restricted vocabulary's index space (the model's input embedding
    is the restricted one); mask: [B, L] attention mask (1 on BOS, real tokens and the first EOS).
    The loss is taken where the *target* is real (mask[:, 1:] == 1), so padding is never a target.
    summary_weight > 0 adds a bag-of-words loss at the first EOS (see :func:`_summary_loss`).
    """
    L = int(mask.sum(dim=1).max())  # longest real sequence in the batch
    ids, mask = ids[:, :L], mask[:, :L]  # [B, L]
    h = model(input_ids=ids).last_hidden_state  # [B, L, D] after the final LayerNorm (causal forward)
    emb = model.get_input_embeddings().weight  # [V', D] tied output embedding
    logits = h[:, :-1] @ emb.T  # [B, L-1, D] @ [D, V'] -> [B, L-1, V']
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # [B, L-1], padding targets ignored
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    if summary_weight > 0:
        loss = loss + summary_weight * _summary_loss(h, ids, mask, emb)
    return loss


def _summary_loss(h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the first EOS output against the prompt's bag of words (BOS/EOS excluded).

    h: [B, L, D] outputs; ids, mask: [B, L]; emb: [V', D]. The EOS output must summarise the prompt, as
    contrastive training makes a real CLIP's pooled output do.
    """
    B, L = ids.shape
    eos = mask.sum(dim=1) - 1  # [B] position of the first EOS
    logits = h[torch.arange(B), eos] @ emb.T  # [B, D] @ [D, V'] -> [B, V']
    inner = mask.clone()  # [B, L] content tokens: real, not BOS, not the first EOS
    inner[:, 0] = 0
    inner[torch.arange(B), eos] = 0
    bag = torch.zeros_like(logits).scatter_add_(1, ids, inner.to(logits.dtype))  # [B, V'] token counts
    bag = bag / bag.sum(dim=1, keepdim=True).clamp_min(1.0)  # [B, V'] target distribution
    return -(bag * F.log_softmax(logits, dim=-1)).sum(dim=1).mean()


def _batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless row-index batches, length-bucketed: each epoch is shuffled, cut into pools of BUCKET_POOL
    batches, each pool sorted by length and cut into batches, and the epoch's batches shuffled again.

    lengths: [N] real lengths. Every batch holds ``min(batch_size, N)`` rows; an epoch's remainder is dropped.
    """
    N = lengths.shape[0]
    B = min(batch_size, N)
    pool = B * BUCKET_POOL
    while True:
        order = torch.randperm(N, generator=gen)  # [N]
        batches: list[torch.Tensor] = []
        for start in range(0, N, pool):
            chunk = order[start : start + pool]  # [<= pool]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]  # sorted by length
            batches += [chunk[k : k + B] for k in range(0, len(chunk) - B + 1, B)]
        for k in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[k]


def pretrain_causal_lm(
    model: CLIPTextModel,
    tokenizer: Any,
    prompts: list[str],
    *,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    summary_weight: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place as a next-token predictor on ``prompts``; leave it in eval mode.

    Logits are the final hidden states (after the final LayerNorm) times the token embedding, restricted to
    the ids that occur in the tokenized prompts (padding included) plus EOS: for the run, the input embedding
    is swapped for one holding only those rows (so neither the gradient nor AdamW touch the other ~47k rows),
    then written back.
    The loss covers real tokens and the first EOS, not padding. AdamW with linear warm-up and cosine decay,
    gradient clipping at 1.0, length-bucketed batches (see :func:`_batches`). Batches come from a generator
    seeded with ``seed`` and the run is wrapped in ``torch.manual_seed(seed)`` (the caller's global RNG is
    restored afterwards): on CPU with one thread the same seed gives bitwise identical weights.

    Args:
        model: the CLIP text tower to train (modified in place).
        tokenizer: a CLIP tokenizer (``transformers.CLIPTokenizer``) matching the model's vocabulary.
        prompts: training prompts.
        steps, batch_size, lr, seed: optimisation settings.
        summary_weight: weight of an optional bag-of-words loss on the first EOS output (default 0: a pure
            language model). A real CLIP's EOS output summarises the prompt (contrastive training); with
            weight 1-2 the EOS and padding outputs of the tiny tower do too, which lowers the cross-prompt
            cosine of the flattened outputs (see the measurements in the module docstring).
        progress: called as ``progress(step, steps)`` after each step (step counts from 1).

    Returns:
        ``{"steps", "initial_loss", "final_loss", "seconds", "kept_vocab"}``; initial_loss and final_loss
        are training-loss means over the first and last 10 steps (or fewer), the summary term included.

    Raises:
        ValueError: on no prompts or non-positive steps or batch size.
    """
    if not prompts or steps < 1 or batch_size < 1:
        raise ValueError("need at least one prompt, steps >= 1 and batch_size >= 1")
    start = time.perf_counter()
    device = model.get_input_embeddings().weight.device
    ids, mask = _tokenize(tokenizer, prompts, model.config.max_position_embeddings)  # [N, T] each
    eos = torch.tensor([model.config.eos_token_id])
    keep = torch.unique(torch.cat([ids.flatten(), eos]))  # [V'] sorted ids of the prompts, padding and EOS
    remap = torch.full((model.config.vocab_size,), -1, dtype=torch.long)  # [V] id -> kept index
    remap[keep] = torch.arange(len(keep))
    small_ids, mask = remap[ids].to(device), mask.to(device)  # [N, T] each, ids in kept-index space
    losses: list[float] = []
    with _restricted_embedding(model, keep.to(device)), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        optimizer = torch.optim.AdamW(_param_groups(model), lr=lr, betas=(0.9, 0.98), eps=1e-8)
        batches = _batches(mask.sum(dim=1).cpu(), batch_size, torch.Generator().manual_seed(seed))
        for step in range(steps):
            rows = next(batches).to(device)  # [B]
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(step, steps)
            loss = _batch_loss(model, small_ids[rows], mask[rows], summary_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps)
    model.eval()
    tail = min(10, steps)
    result = {
        "steps": float(steps),
        "initial_loss": sum(losses[:tail]) / tail,
        "final_loss": sum(losses[-tail:]) / tail,
        "seconds": time.perf_counter() - start,
        "kept_vocab": float(len(keep)),
    }
    log.info("pretrained %d steps in %.1f s, loss %.3f -> %.3f", steps, result["seconds"], losses[0], losses[-1])
    return result


@contextmanager
def _restricted_embedding(model: CLIPTextModel, keep: torch.Tensor) -> Iterator[torch.nn.Embedding]:
    """Swap the input embedding for a trainable copy of rows ``keep`` ([V']); write them back on exit.

    Inside, token ids must be indices into ``keep``. The other rows get neither gradient nor optimizer state,
    and are left exactly as they were.
    """
    full = model.get_input_embeddings()  # nn.Embedding [V, D]
    small = torch.nn.Embedding.from_pretrained(full.weight.detach()[keep].clone(), freeze=False)  # [V', D]
    model.set_input_embeddings(small)
    try:
        yield small
    finally:
        with torch.no_grad():
            full.weight[keep] = small.weight.to(full.weight.dtype)
        model.set_input_embeddings(full)


def _mean_offdiag_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine between different rows of x: [N, F] -> scalar (needs N >= 2)."""
    N = x.shape[0]
    xn = F.normalize(x, dim=-1, eps=1e-8)  # [N, F]
    total = xn.sum(dim=0).square().sum()  # |sum_i x_i|^2 = sum_{i,j} cos_ij
    diag = xn.square().sum()  # sum_i |x_i|^2
    return (total - diag) / (N * (N - 1))


@torch.no_grad()
def clean_profile(
    model: CLIPTextModel, tokenizer: Any, prompts: list[str], *, max_length: int = 77, batch_size: int = 64
) -> dict[str, float]:
    """How a tower treats clean prompts, tokenized as SD 1.x does (padded to ``max_length``, no attention mask).

    Returns:
        assimilation_all: mean over prompts of :func:`~amdet_audit.scan.objective.assimilation` over all
            positions (EOS padding included);
        assimilation_real: the same over real tokens incl. BOS and EOS (the attention mask);
        cross_prompt_cosine: mean cosine between the flattened [T * D] outputs of different prompts;
        cross_prompt_cosine_centred: the same after subtracting the mean output over these prompts. Centring
            on the profiled prompts themselves pulls this towards -1 / (N - 1) by construction; it shows
            whether any shared structure is left beyond the mean;
        cross_prompt_cosine_real: the cross-prompt cosine with padding positions zeroed (real tokens only);
        n_prompts: N.

    Raises:
        ValueError: with fewer than 2 prompts.
    """
    if len(prompts) < 2:
        raise ValueError("clean_profile needs at least 2 prompts")
    ids, mask = _tokenize(tokenizer, prompts, max_length)  # [N, T] each
    ids, mask = ids.to(model.device), mask.to(model.device)
    was_training = model.training
    model.eval()
    states = torch.cat(
        [model(input_ids=ids[i : i + batch_size]).last_hidden_state.float() for i in range(0, len(ids), batch_size)]
    )  # [N, T, D]
    model.train(was_training)
    flat = states.flatten(1)  # [N, T*D]
    return {
        "assimilation_all": float(assimilation(states).mean()),
        "assimilation_real": float(assimilation(states, mask).mean()),
        "cross_prompt_cosine": float(_mean_offdiag_cosine(flat)),
        "cross_prompt_cosine_centred": float(_mean_offdiag_cosine(flat - flat.mean(dim=0, keepdim=True))),
        "cross_prompt_cosine_real": float(_mean_offdiag_cosine((states * mask.unsqueeze(-1)).flatten(1))),
        "n_prompts": float(len(prompts)),
    }
