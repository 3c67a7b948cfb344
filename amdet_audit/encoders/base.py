"""The Adapter protocol: everything the scan may ask of a text encoder, and nothing about files.

Conventions every adapter keeps:
- ``T`` is the consumer's sequence length (77 for SD's CLIP towers); prompts are padded to it the way the
  consumer pads (EOS for SD 1.x, ``!`` for SD 2.x) and truncated to it.
- Token embeddings carry no position; positions are added inside :meth:`Adapter.forward`. Vectors inserted
  with ``insert`` therefore live in token-embedding space: a pseudo-trigger is a genuine (soft) token, and
  its Textual-Inversion export needs no position removed. They go after the first ``insert_position`` tokens:
  1 behind a start token (CLIP's BOS, BERT's [CLS]), 0 where the tokenizer adds none (SigLIP, T5).
- ``attends_padding``: whether real tokens' outputs depend on the padding (no padding mask, as SD, SigLIP and
  FLUX's T5 run). A bidirectional tower that attends its padding must always run at the full length T.
- Weights are frozen (``requires_grad`` False, eval mode); gradients flow only to ``insert``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class TextBatch:
    """Tokenized prompts. ids, attention_mask: [B, T] (mask 1 on real tokens incl. BOS/EOS, 0 on padding)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass(frozen=True)
class EncoderOutput:
    """What one forward pass yields.

    read: [B, T, D] the hidden states the consumer reads (e.g. last layer after final LayerNorm for SD 1.x,
        penultimate layer without it for SDXL).
    last: [B, T, D] the final hidden states after the final LayerNorm.
    pooled: [B, P] the pooled output (projected when the model has a projection).
    """

    read: torch.Tensor
    last: torch.Tensor
    pooled: torch.Tensor


@runtime_checkable
class Adapter(Protocol):
    """A frozen text encoder the scan can drive from token embeddings."""

    family: str  # "clip", "bert", ...
    hidden_size: int  # D
    max_length: int  # T
    causal: bool  # causal self-attention (CLIP) or bidirectional (BERT, T5)
    attends_padding: bool  # real tokens see the padding (no padding mask)
    insert_position: int  # tokens before the inserted vectors: 1 (BOS/[CLS]) or 0 (no start token)
    pad_id: int
    bos_id: int  # -1 when the tokenizer adds no start token
    eos_id: int
    read_layer: int  # -1: last layer (+final norm); -2: penultimate, as SDXL reads it
    device: torch.device
    dtype: torch.dtype

    def tokenize(self, prompts: list[str]) -> TextBatch:
        """Tokenize and pad/truncate to T exactly as the consumer does."""
        ...

    def token_embedding_matrix(self) -> torch.Tensor:
        """[V, D] the token-embedding table (for nearest-token decoding of a pseudo-trigger)."""
        ...

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] token embeddings, no positions."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] post-embedding states (token + position), as the first layer sees them."""
        ...

    def forward(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        insert: torch.Tensor | None = None,
        token_embeds: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the encoder on [B, T] ids.

        insert: [k, D] or [B, k, D] vectors in token-embedding space placed after the first
            ``insert_position`` tokens; the sequence is cut back to T (the last k tokens drop off) and
            positions are those of the new layout.
        token_embeds: [B, T, D] precomputed token embeddings of ``ids`` (saves the lookup in loops).
        With neither, the result equals the model's own forward on ``ids``.
        """
        ...

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Adapter:
        """Move the frozen weights; returns self."""
        ...

    def describe(self) -> dict[str, object]:
        """Architecture facts for reports: family, D, T, layers, pad token, causal, read layer, projection."""
        ...


class PaddedTokenizerMixin:
    """What every adapter family does alike: tokenize to exactly T (pad + truncate), check ids, move its
    weights, and the architecture facts every family reports.

    Needs ``self.tokenizer``, ``self.max_length``, ``self.max_positions``, ``self.model``, ``self.config``,
    ``self.device``, ``self.dtype``, ``self.family`` and the ids/sizes named in :meth:`common_facts`.
    """

    def tokenize(self, prompts: list[str]) -> TextBatch:
        """Pad (with the tokenizer's pad token) and truncate to T, as the consumer does."""
        from amdet_audit.errors import TokenizerError

        if self.tokenizer is None:  # type: ignore[attr-defined]
            raise TokenizerError(f"this {self.family} adapter was built without a tokenizer")  # type: ignore
        enc = self.tokenizer(  # type: ignore[attr-defined]
            list(prompts), padding="max_length", max_length=self.max_length,  # type: ignore[attr-defined]
            truncation=True, return_tensors="pt")
        device = self.device  # type: ignore[attr-defined]
        return TextBatch(ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None):
        """Move (and optionally cast) the frozen weights; returns self."""
        self.model.to(device=device, dtype=dtype)  # type: ignore[attr-defined]
        param = next(self.model.parameters())  # type: ignore[attr-defined]
        self.device, self.dtype = param.device, param.dtype
        return self

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Reject ids that are not a [B, T] integer tensor with T within the position table; move them."""
        if ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"ids must be a [B, T] integer tensor, got {ids.dtype} {list(ids.shape)}")
        if ids.shape[1] > self.max_positions:  # type: ignore[attr-defined]
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the model's "
                             f"{self.max_positions} positions")  # type: ignore[attr-defined]
        return ids.to(self.device)  # type: ignore[attr-defined]

    def common_facts(self) -> dict[str, object]:
        """The describe() facts every family shares (the family adds causal, read layer, pooling...)."""
        cfg, tokenizer = self.config, self.tokenizer  # type: ignore[attr-defined]
        return {
            "family": self.family,  # type: ignore[attr-defined]
            "architecture": type(self.model).__name__,  # type: ignore[attr-defined]
            "hidden_size": self.hidden_size,  # type: ignore[attr-defined]
            "layers": self.num_layers,  # type: ignore[attr-defined]
            "heads": int(cfg.num_attention_heads),
            "max_length": self.max_length,  # type: ignore[attr-defined]
            "max_positions": self.max_positions,  # type: ignore[attr-defined]
            "vocab_size": int(cfg.vocab_size),
            "pad_token": None if tokenizer is None else str(tokenizer.pad_token),
            "pad_id": self.pad_id,  # type: ignore[attr-defined]
            "bos_id": self.bos_id,  # type: ignore[attr-defined]
            "eos_id": self.eos_id,  # type: ignore[attr-defined]
            "parameters": sum(p.numel() for p in self.model.parameters()),  # type: ignore[attr-defined]
            "dtype": str(self.dtype).removeprefix("torch."),
        }
