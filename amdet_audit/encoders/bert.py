"""BERT-family text encoders (``BertModel``, e.g. all-MiniLM-L6-v2) behind the Adapter protocol.

Bidirectional: every token sees every other real token, so the padding mask matters. Sentence-embedding
consumers always pass the tokenizer's attention mask; this adapter therefore masks padding keys on every
call, taking ``attention_mask`` when given and ``ids != pad_id`` otherwise (BERT tokenizers never emit
``[PAD]`` for text). Pseudo-trigger vectors go right after ``[CLS]`` and count as real tokens.

The tower is driven through the model's own forward with ``inputs_embeds`` (word embeddings, no position), so
positions, token types and the embedding LayerNorm are applied exactly as in ``model(input_ids=ids)``.

Pooled output: the mean of the last layer over real tokens, as sentence-transformers pools all-MiniLM-L6-v2
(its Normalize step does not change cosines). ``read`` is the last layer, or ``hidden_states[read_layer]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from amdet_audit.encoders.base import EncoderOutput, PaddedTokenizerMixin
from amdet_audit.encoders.insertion import insert_at, shift_mask
from amdet_audit.encoders.weights import (
    POSITION_IDS,
    check_budget,
    declared_shapes,
    local_tokenizer,
    materialize,
    prefixed_keys,
    read_weights,
    with_layers,
)
from amdet_audit.errors import ConfigFileError, TokenizerError, one_line
from amdet_audit.sources.model import Component

#: Prompts are padded to this many positions (or the model's, if fewer). Real tokens see only real tokens, so
#: the count of padding positions changes no real-token output; 64 holds every corpus prompt with room to spare.
SCAN_LENGTH = 64


class BertTextAdapter(PaddedTokenizerMixin):
    """A frozen ``BertModel`` the scan drives from token embeddings (see :mod:`amdet_audit.encoders.base`)."""

    family = "bert"
    causal = False
    attends_padding = False  # padding keys are always masked
    insert_position = 1  # after [CLS]

    def __init__(self, model: nn.Module, tokenizer: Any | None, *, read_layer: int = -1) -> None:
        if not all(hasattr(model, part) for part in ("embeddings", "encoder")):
            raise TypeError(f"{type(model).__name__} is not a BERT encoder (no embeddings/encoder)")
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.tokenizer = tokenizer
        self.num_layers = int(self.config.num_hidden_layers)
        if not -(self.num_layers + 1) <= read_layer <= -1:
            raise ValueError(f"read_layer must be in -1..-{self.num_layers + 1}, got {read_layer}")
        self.read_layer = read_layer
        self.hidden_size = int(self.config.hidden_size)
        self.max_positions = int(self.config.max_position_embeddings)
        self.max_length = min(self.max_positions, SCAN_LENGTH)
        if tokenizer is None:
            self.bos_id, self.eos_id, self.pad_id = 101, 102, int(self.config.pad_token_id or 0)
        else:
            self.bos_id, self.eos_id = int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
            self.pad_id = int(tokenizer.pad_token_id)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def token_embedding_matrix(self) -> torch.Tensor:
        """[V, D] the word-embedding table (detached, shares storage)."""
        return self.model.embeddings.word_embeddings.weight.detach()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] word embeddings, no positions."""
        return self.model.embeddings.word_embeddings(ids.to(self.device))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] the embedding layer's output (word + position + type, LayerNorm)."""
        return self.model.embeddings(input_ids=ids.to(self.device))

    def forward(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        insert: torch.Tensor | None = None,
        token_embeds: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the encoder on [B, T] ids; see :meth:`amdet_audit.encoders.base.Adapter.forward`.

        attention_mask: [B, T] padding mask; None derives it from ``ids != pad_id``.
        """
        ids = self._check_ids(ids)
        mask = (ids != self.pad_id).long() if attention_mask is None else attention_mask.to(self.device).long()
        tokens = self.embed_tokens(ids) if token_embeds is None else token_embeds.to(self.device, self.dtype)
        if tokens.shape[:2] != ids.shape:
            raise ValueError(f"token_embeds {list(tokens.shape)} do not match ids {list(ids.shape)}")
        if insert is not None:
            tokens = insert_at(tokens, insert, self.insert_position)
            mask = shift_mask(mask, insert.shape[-2], self.insert_position)
        out = self.model(inputs_embeds=tokens, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                         output_hidden_states=self.read_layer != -1, return_dict=True)
        last = out.last_hidden_state  # [B, T, D]
        read = last if self.read_layer == -1 else out.hidden_states[self.read_layer]
        weights = mask.to(last.dtype).unsqueeze(-1)  # [B, T, 1]
        pooled = (last * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # [B, D] mean over real tokens
        return EncoderOutput(read=read, last=last, pooled=pooled)

    __call__ = forward

    def describe(self) -> dict[str, object]:
        """JSON-ready architecture facts for reports."""
        return {**self.common_facts(), "causal": False, "read_layer": self.read_layer, "pooling": "mean",
                "projection_dim": None}


# ---- loading: config, tokenizer and checked weights -> BertTextAdapter ----------------------------------------

MODEL_TYPES = ("bert",)
ARCHITECTURES = ("BertModel",)
STATE_PREFIX = "bert."  # task-head checkpoints (BertForMaskedLM, ...) keep the encoder under bert.
BERT_IGNORED_PREFIXES = ("cls.", "classifier.", "qa_outputs.")  # task heads, not part of the encoder


def load_bert_tokenizer(component: Component) -> Any:
    """The component's BERT WordPiece tokenizer (local files only, no remote code)."""
    import transformers

    folder = component.tokenizer_path
    has_vocab = folder is not None and (folder / "vocab.txt").is_file()
    has_json = folder is not None and (folder / "tokenizer.json").is_file()
    if not (has_vocab or has_json):
        raise TokenizerError(f"no tokenizer found for {component.name} (expected vocab.txt or tokenizer.json)")
    cls = transformers.BertTokenizerFast if has_json else transformers.BertTokenizer
    tokenizer = local_tokenizer(cls, folder, f"BERT tokenizer for {component.name}")
    if None in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        raise TokenizerError(f"{folder}: BERT tokenizer for {component.name} lacks a [CLS], [SEP] or [PAD] token")
    return tokenizer


def build(
    component: Component,
    config: Mapping[str, Any],
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    read_layer: int,
    read_norm: bool | None = None,
    **_: Any,
) -> BertTextAdapter:
    """The BERT family builder: config, tokenizer, checked weights -> BertTextAdapter (pooler layer included
    when the weights have one). ``read_norm`` and the consumer's length/mask do not apply: every BERT layer ends
    in its own LayerNorm, and padding is always masked."""
    from transformers import BertConfig, BertModel

    try:
        bert_config = BertConfig.from_dict(dict(config))
    except Exception as exc:  # transformers raises TypeError, ValueError or strict-dataclass errors
        raise ConfigFileError(f"{component.config_path}: not a valid BERT config ({one_line(exc)})") from exc
    tokenizer = load_bert_tokenizer(component)

    def ignorable(name: str) -> bool:
        return name.startswith(BERT_IGNORED_PREFIXES) or name == POSITION_IDS

    keep, canonical = prefixed_keys(STATE_PREFIX, ignorable, component.key_prefix)

    tensors = read_weights(component, keep=keep) if component.weight_format == "pickle" else None
    declared = declared_shapes(component, keep, tensors)
    has_pooler = any(canonical(k).startswith("pooler.") for k in declared)
    check_budget(lambda n: BertModel(with_layers(bert_config, n), add_pooling_layer=has_pooler),
                 int(bert_config.num_hidden_layers), declared, canonical=canonical, ignorable=ignorable,
                 where=component.config_path)
    tensors = tensors if tensors is not None else read_weights(component, keep=keep)
    model = materialize(component, lambda: BertModel(bert_config, add_pooling_layer=has_pooler), tensors,
                        canonical=canonical, ignorable=ignorable, device=device, dtype=dtype)
    return BertTextAdapter(model, tokenizer, read_layer=read_layer)
