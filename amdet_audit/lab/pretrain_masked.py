"""Make tiny bidirectional towers (SigLIP- and T5-shaped) behave like pretrained encoders: masked-LM pretraining.

A bidirectional tower cannot be trained as a next-token predictor (every position sees the answer), so the
lab's SigLIP and T5 bases learn to fill in masked pieces of prompts instead (BERT's objective), through logits
tied to the token embedding, with a bag-of-words term on the pooled output so that it summarises the prompt as
contrastive training makes a real SigLIP's pooled output do. Training runs through the scan's own adapters,
so the model learns under exactly the padding and pooling its consumer uses (SigLIP: 64 tokens, padding
attended, last position pooled; T5: padding attended, mean over real tokens).

- :func:`make_tiny_siglip`, :func:`make_tiny_t5` build the seeded random towers;
- :func:`pretrain_masked_lm` trains one in place (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from amdet_audit.encoders.base import Adapter
from amdet_audit.lab.pretrain import GRAD_CLIP, _batches, _lr_factor, _param_groups
from amdet_audit.lab.sentencepiece_vocab import EOS_ID, MASK_ID, PAD_ID, SIGLIP_LENGTH

log = logging.getLogger(__name__)

MASK_SHARE = 0.15  # of each prompt's pieces, replaced by <mask> and predicted


def make_tiny_siglip(vocab_size: int, *, hidden: int = 128, layers: int = 4, heads: int = 4,
                     intermediate: int = 512, max_positions: int = SIGLIP_LENGTH, seed: int = 0):
    """A seeded random ``SiglipTextModel`` (pad = ``</s>``, as google/siglip-*), in eval mode."""
    from transformers import SiglipTextConfig, SiglipTextModel

    config = SiglipTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              max_position_embeddings=max_positions, projection_size=hidden,
                              pad_token_id=EOS_ID, bos_token_id=None, eos_token_id=EOS_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SiglipTextModel(config).eval()


def make_tiny_t5(vocab_size: int, *, hidden: int = 128, layers: int = 4, heads: int = 4, d_ff: int = 512,
                 seed: int = 0):
    """A seeded random ``T5EncoderModel`` shaped like T5 v1.1 (gated GELU, untied head irrelevant), in eval mode."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=hidden // heads, d_ff=d_ff, num_layers=layers,
                      num_heads=heads, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                      use_cache=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(config).eval()


def masked(ids: torch.Tensor, real: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with MASK_SHARE of the real pieces replaced by <mask> (at least one per prompt), targets [B, T]:
    the original id where masked, -100 elsewhere). real: [B, T] 1 on pieces (not </s>, not padding)."""
    draw = torch.rand(ids.shape, generator=gen).to(ids.device)
    chosen = (draw < MASK_SHARE) & real.bool()
    first = torch.where(real.bool(), draw, torch.full_like(draw, 2.0)).argmin(dim=1)  # one sure pick per row
    chosen[torch.arange(ids.shape[0]), first] = True
    chosen &= real.bool()
    return ids.masked_fill(chosen, MASK_ID), ids.masked_fill(~chosen, -100)


def bag_of_words(ids: torch.Tensor, real: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, V] each prompt's piece distribution (its real pieces counted, normalised)."""
    bag = torch.zeros(ids.shape[0], vocab, device=ids.device).scatter_add_(1, ids, real.float())
    return bag / bag.sum(dim=1, keepdim=True).clamp_min(1.0)


def pretrain_masked_lm(
    adapter: Adapter, prompts: Sequence[str], *, steps: int = 400, batch_size: int = 32, lr: float = 3e-3,
    seed: int = 0, summary_weight: float = 1.0, progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Train the adapter's model in place as a masked-LM on ``prompts`` (plus a bag-of-words term on the pooled
    output, weight ``summary_weight``), under the adapter's padding and pooling; leave it frozen in eval mode.

    AdamW with warm-up and cosine decay, gradient clipping, length-bucketed batches (as the CLIP canary's
    pretraining, :mod:`amdet_audit.lab.pretrain`); deterministic for ``seed`` on one thread.
    Returns ``{"steps", "initial_loss", "final_loss", "seconds", "vocab"}``.
    """
    if not prompts or steps < 1 or batch_size < 1:
        raise ValueError("need at least one prompt, steps >= 1 and batch_size >= 1")
    start = time.perf_counter()
    batch = adapter.tokenize(list(prompts))
    ids, mask = batch.ids, batch.attention_mask  # [N, T]
    real = mask.clone()
    real[ids == adapter.eos_id] = 0  # pieces only: not </s>, not padding
    model = adapter.model
    vocab = adapter.token_embedding_matrix().shape[0]
    losses: list[float] = []
    model.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        optimizer = torch.optim.AdamW(_param_groups(model), lr=lr, betas=(0.9, 0.98), eps=1e-8)
        rows_of = _batches(real.sum(dim=1).cpu(), batch_size, torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed + 1)
        for step in range(steps):
            rows = next(rows_of).to(ids.device)
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(step, steps)
            inputs, targets = masked(ids[rows], real[rows], gen)
            out = adapter(inputs)
            table = model.get_input_embeddings().weight  # [V, D] tied output embedding
            logits = out.last @ table.T  # [B, T, V]
            loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=-100)
            if summary_weight > 0:
                bag = bag_of_words(ids[rows], real[rows], vocab)  # [B, V]
                loss = loss - summary_weight * (bag * F.log_softmax(out.pooled @ table.T, dim=-1)).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps)
    model.eval().requires_grad_(False)
    tail = min(10, steps)
    result = {"steps": float(steps), "initial_loss": sum(losses[:tail]) / tail,
              "final_loss": sum(losses[-tail:]) / tail, "seconds": time.perf_counter() - start, "vocab": float(vocab)}
    log.info("masked-LM pretrained %d steps in %.1f s, loss %.3f -> %.3f", steps, result["seconds"], losses[0],
             losses[-1])
    return result


@torch.no_grad()
def bidirectional_profile(adapter: Adapter, prompts: list[str]) -> dict[str, Any]:
    """Clean-prompt assimilation and cross-prompt cosines of a bidirectional tower, read as its consumer reads it
    (:func:`amdet_audit.lab.pretrain.clean_profile`'s numbers, through the adapter)."""
    from amdet_audit.lab.pretrain import _mean_offdiag_cosine
    from amdet_audit.scan.objective import assimilation

    batch = adapter.tokenize(prompts)
    outputs = [adapter(batch.ids[i : i + 64]) for i in range(0, len(prompts), 64)]  # one forward per batch
    states = torch.cat([out.read.float() for out in outputs])
    pooled = torch.cat([out.pooled.float() for out in outputs])
    mask = batch.attention_mask
    flat = states.flatten(1)
    return {"assimilation_all": float(assimilation(states).mean()),
            "assimilation_real": float(assimilation(states, mask).mean()),
            "cross_prompt_cosine": float(_mean_offdiag_cosine(flat)),
            "cross_prompt_cosine_real": float(_mean_offdiag_cosine((states * mask.unsqueeze(-1)).flatten(1))),
            "pooled_cross_prompt_cosine": float(_mean_offdiag_cosine(pooled)),
            "n_prompts": float(len(prompts))}
