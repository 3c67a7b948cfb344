"""The CLIP text tower (``CLIPTextModel`` / ``CLIPTextModelWithProjection``) behind the Adapter protocol.

The adapter drives the tower from token embeddings through public modules only: ``embeddings.token_embedding``,
``embeddings.position_embedding``, ``encoder``, ``final_layer_norm`` and ``text_projection``. It works with both
module layouts: transformers 5.x keeps the parts directly on ``CLIPTextModel``; ``CLIPTextModelWithProjection``
(and every 4.x model) keeps them under ``.text_model``.

Attention: the encoder is always called with our own additive 4-D causal mask ([B, 1, T, T], ``finfo.min`` above
the diagonal) as ``attention_mask``. Calling it with no mask would silently run it bidirectionally.

Padding: SD 1.x/2.x and SDXL pass NO attention mask to the text encoder, so ``forward(ids)`` (no
``attention_mask``) reproduces ``model(input_ids=ids)`` exactly, padding tokens attended to (causally). Pass the
tokenizer's ``attention_mask`` only for a consumer that passes it too; it is then combined with the causal mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amdet_audit.encoders import openclip
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

LEGACY_EOS_ID = 2  # configs from before transformers PR #24773: pooling takes the argmax of the ids


def locate_parts(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(tower holding embeddings/encoder/final_layer_norm, text_projection or None) for either layout."""
    tower = model
    if not hasattr(tower, "embeddings") and hasattr(model, "text_model"):
        tower = model.text_model
    for part in ("embeddings", "encoder", "final_layer_norm"):
        if not hasattr(tower, part):
            raise TypeError(f"{type(model).__name__} has no CLIP text tower part {part!r}")
    return tower, getattr(model, "text_projection", None)


def causal_mask(
    length: int, dtype: torch.dtype, device: torch.device, key_mask: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Additive attention mask [B or 1, 1, T, T]: 0 where query i may attend key j (j <= i), finfo.min elsewhere.

    key_mask: optional [B, T] (1 real token, 0 padding); padded keys are then masked too.
    causal: False allows every key (only the key mask applies).
    """
    allowed = torch.ones(length, length, dtype=torch.bool, device=device)  # [T, T]
    allowed = (allowed.tril() if causal else allowed)[None, None]  # [1, 1, T, T]
    if key_mask is not None:
        allowed = allowed & key_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # [B, 1, T, T]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


@contextmanager
def capture_output(module: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """While active, append the hidden states ``module`` outputs (a tensor in 5.x, a tuple in 4.x) to store."""

    def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
        store.append(output[0] if isinstance(output, (tuple, list)) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ClipTextAdapter(PaddedTokenizerMixin):
    """A frozen CLIP text tower the scan drives from token embeddings (see :mod:`amdet_audit.encoders.base`).

    read_layer: the consumer-read sequence is ``hidden_states[read_layer]`` (-1: the last layer); read_norm: with
    the final LayerNorm applied to it (default: only for -1). SD 1.x/2.x read -1 with the norm, and apply it
    after a clip skip too; SDXL and SD3 read -2 without it (see :mod:`amdet_audit.encoders.consumers`).
    """

    family = "clip"
    causal = True
    attends_padding = True  # SD pipelines pass no padding mask (causal: earlier outputs never see it)
    insert_position = 1  # after BOS

    def __init__(self, model: nn.Module, tokenizer: Any | None, *, read_layer: int = -1,
                 read_norm: bool | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self._tower, self._projection = locate_parts(model)
        self.config = model.config
        self.tokenizer = tokenizer
        self.num_layers = len(self._tower.encoder.layers)
        if not -(self.num_layers + 1) <= read_layer <= -1:
            raise ValueError(f"read_layer must be in -1..-{self.num_layers + 1}, got {read_layer}")
        self.read_layer = read_layer
        self.read_norm = read_layer == -1 if read_norm is None else read_norm
        self.hidden_size = int(self.config.hidden_size)
        self.max_positions = int(self.config.max_position_embeddings)
        self.max_length = min(self.max_positions, int(getattr(tokenizer, "model_max_length", self.max_positions)))
        self.bos_id, self.eos_id, self.pad_id = self._special_ids(tokenizer)
        self._pool_eos_id = self.config.eos_token_id
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def _special_ids(self, tokenizer: Any | None) -> tuple[int, int, int]:
        """(BOS, EOS, pad) ids: the tokenizer's (what the consumer feeds), else the config's."""
        cfg = self.config
        if tokenizer is None:
            return int(cfg.bos_token_id), int(cfg.eos_token_id), int(cfg.pad_token_id)
        return int(tokenizer.bos_token_id), int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)

    def token_embedding_matrix(self) -> torch.Tensor:
        """[V, D] the token-embedding table (detached, shares storage)."""
        return self._tower.embeddings.token_embedding.weight.detach()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] token embeddings, no positions."""
        return self._tower.embeddings.token_embedding(ids.to(self.device))

    def positions(self, length: int) -> torch.Tensor:
        """[T, D] the position embeddings of the first T positions."""
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} tokens exceeds the model's {self.max_positions} positions")
        return self._tower.embeddings.position_embedding.weight[:length]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] token + position embeddings, as the first layer sees them."""
        return self.embed_tokens(ids) + self.positions(ids.shape[-1])  # [B, T, D] + [T, D]

    def forward(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        insert: torch.Tensor | None = None,
        token_embeds: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the tower on [B, T] ids; see :meth:`amdet_audit.encoders.base.Adapter.forward`.

        attention_mask: [B, T] padding mask, combined with the causal mask; leave None for SD consumers, which
            pass none (then the result equals ``model(input_ids=ids)``).
        """
        ids = self._check_ids(ids)
        tokens = self.embed_tokens(ids) if token_embeds is None else token_embeds.to(self.device, self.dtype)
        if tokens.shape[:2] != ids.shape:
            raise ValueError(f"token_embeds {list(tokens.shape)} do not match ids {list(ids.shape)}")
        k = 0
        if insert is not None:
            tokens = insert_at(tokens, insert, self.insert_position)
            k = insert.shape[-2]
            if attention_mask is not None:
                attention_mask = shift_mask(attention_mask.to(self.device), k, self.insert_position)
        hidden = tokens + self.positions(ids.shape[1])  # [B, T, D] + [T, D]
        mask = self.attention(ids.shape[1], attention_mask)  # [B or 1, 1, T, T] or None
        pre_norm, read = self._encode(hidden, mask)
        last = self._tower.final_layer_norm(pre_norm)  # [B, T, D]
        if read is None:
            read = last if self.read_norm else pre_norm
        elif self.read_norm:
            read = self._tower.final_layer_norm(read)
        pooled = self.pool(last, ids, k)  # [B, D]
        if self._projection is not None:
            pooled = self._projection(pooled)  # [B, D] @ [D, P] -> [B, P]
        return EncoderOutput(read=read, last=last, pooled=pooled)

    __call__ = forward

    def attention(self, length: int, key_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The additive mask the encoder runs with: causal, and the padding mask when one is given."""
        return causal_mask(length, self.dtype, self.device, key_mask)

    def pool(self, last: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
        """[B, T, D] final states -> [B, D] the pooled (EOS) state, before any projection."""
        return last[torch.arange(ids.shape[0], device=self.device), self.pool_positions(ids, k)]

    def _encode(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the encoder layers: (last hidden states before the final norm, read states or None for -1)."""
        if self.read_layer == -1:
            return self._tower.encoder(inputs_embeds=hidden, attention_mask=mask)[0], None
        index = self.num_layers + 1 + self.read_layer  # into hidden_states: 0 embeddings, i output of layer i-1
        if index == 0:
            return self._tower.encoder(inputs_embeds=hidden, attention_mask=mask)[0], hidden
        store: list[torch.Tensor] = []
        with capture_output(self._tower.encoder.layers[index - 1], store):
            out = self._tower.encoder(inputs_embeds=hidden, attention_mask=mask)[0]
        return out, store[0]

    def pool_positions(self, ids: torch.Tensor, k: int = 0) -> torch.Tensor:
        """[B] the pooled (EOS) position, by the rule of transformers >= 4.31, shifted by k inserted vectors.

        Configs with eos_token_id == 2 (pre-#24773, e.g. openai/clip-vit-large-patch14) pool at argmax(ids);
        others at the first EOS. An EOS pushed past the end by the insertion pools at the last position.
        """
        as_int = ids.to(torch.int)  # argmax has no int64 kernel in some exporters; transformers casts too
        if self._pool_eos_id == LEGACY_EOS_ID:
            pos = as_int.argmax(dim=-1)
        else:
            pos = (as_int == self._pool_eos_id).int().argmax(dim=-1)
        return (pos + k).clamp(max=ids.shape[1] - 1)

    def describe(self) -> dict[str, object]:
        """JSON-ready architecture facts for reports."""
        return {
            **self.common_facts(),
            "causal": True,
            "read_layer": self.read_layer,
            "read_norm": self.read_norm,
            "pooling": "argmax_id" if self._pool_eos_id == LEGACY_EOS_ID else "first_eos",
            "projection_dim": None if self._projection is None else int(self._projection.out_features),
        }


# ---- loading: config, tokenizer and checked weights -> ClipTextAdapter ----------------------------------------

#: model_type -> this family ("clip" is a full CLIPModel, whose text tower is used)
MODEL_TYPES = ("clip_text_model", "clip")
#: architecture class names of this family, for configs without a usable model_type
ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPModel")
CLIP_TEXT_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
STATE_PREFIX = "text_model."  # where checkpoints of this family nest the text tower (weights-diff reads it too)
OTHER_TOWER_PREFIXES = ("vision_model.", "visual_projection.", "logit_scale")
FULL_CLIP_HEAD_PREFIXES = ("text_projection.",)  # the joint head of a full CLIPModel, not part of the text tower


def clip_text_config(config: Mapping[str, Any], where: Path) -> tuple[Any, bool]:
    """(CLIPTextConfig, is_full_clip) from a text-tower config or a full CLIPModel config (its text_config)."""
    from transformers import CLIPConfig, CLIPTextConfig

    full = config.get("model_type") == "clip" or "CLIPModel" in (config.get("architectures") or [])
    try:
        text = CLIPConfig.from_dict(dict(config)).text_config if full else CLIPTextConfig.from_dict(dict(config))
    except Exception as exc:  # transformers raises TypeError, ValueError or strict-dataclass errors
        raise ConfigFileError(f"{where}: not a valid CLIP text config ({one_line(exc)})") from exc
    return text, full


def clip_class_name(config: Mapping[str, Any], component: Component, tensors: Mapping[str, Any], full: bool) -> str:
    """Which CLIP text class the weights belong to: the config's architecture, else the component's, else the
    presence of a ``text_projection`` tensor decides."""
    if full:
        return "CLIPTextModel"
    for name in [*(config.get("architectures") or []), component.architecture]:
        if name in CLIP_TEXT_CLASSES:
            return name
    has_projection = any(k.removeprefix(component.key_prefix).removeprefix(STATE_PREFIX).startswith(
        "text_projection.") for k in tensors)
    return CLIP_TEXT_CLASSES[1] if has_projection else CLIP_TEXT_CLASSES[0]


def load_clip_tokenizer(component: Component, max_positions: int) -> Any:
    """The component's CLIPTokenizer (local files only), with model_max_length capped at the model's positions."""
    import transformers

    folder = component.tokenizer_path
    has_bpe = folder is not None and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    has_json = folder is not None and (folder / "tokenizer.json").is_file()
    if not (has_bpe or has_json):
        raise TokenizerError(
            f"no tokenizer found for {component.name} (looked in {folder or component.config_path.parent} for "
            "vocab.json + merges.txt or tokenizer.json); pass --tokenizer PATH, or --tokenizer clip for the CLIP "
            "vocabulary amdet-audit ships (clip-sd2 for SD 2.x/SDXL padding)"
        )
    cls = transformers.CLIPTokenizer if has_bpe else transformers.CLIPTokenizerFast
    tokenizer = local_tokenizer(cls, folder, f"CLIP tokenizer for {component.name}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
        raise TokenizerError(f"{folder}: CLIP tokenizer for {component.name} lacks a BOS, EOS or pad token")
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    return tokenizer


def clip_ignorable(full: bool) -> Callable[[str], bool]:
    """Canonical keys to drop: another tower's (and, for a full CLIPModel, its joint head), and position_ids."""
    prefixes = OTHER_TOWER_PREFIXES + (FULL_CLIP_HEAD_PREFIXES if full else ())
    return lambda name: name.startswith(prefixes) or name == POSITION_IDS



def build(
    component: Component,
    config: Mapping[str, Any],
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    read_layer: int,
    read_norm: bool | None = None,
    **_: Any,
) -> ClipTextAdapter:
    """The CLIP family builder: config, tokenizer, checked weights -> ClipTextAdapter."""
    import transformers

    text_config, full = clip_text_config(config, component.config_path)
    tokenizer = load_clip_tokenizer(component, int(text_config.max_position_embeddings))
    ignorable = clip_ignorable(full)
    keep, canonical = prefixed_keys(STATE_PREFIX, ignorable, component.key_prefix)

    layers = int(text_config.num_hidden_layers)
    from_openclip = component.key_layout == "openclip"  # OpenCLIP names under its prefix, converted on load
    if from_openclip:
        def keep(key: str) -> bool:
            return key.startswith(component.key_prefix)
    tensors = read_weights(component, keep=keep) if component.weight_format == "pickle" else None
    declared = declared_shapes(component, keep, tensors)
    if from_openclip:
        declared = openclip.convert_shapes(declared, component.key_prefix, layers)
    cls = getattr(transformers, clip_class_name(config, component, declared, full))
    check_budget(lambda n: cls(with_layers(text_config, n)), layers, declared,
                 canonical=canonical, ignorable=ignorable, where=component.config_path)
    if tensors is None:
        tensors = read_weights(component, keep=keep)
    if from_openclip:
        tensors = openclip.convert_tensors(tensors, component.key_prefix, layers)
    model = materialize(component, lambda: cls(text_config), tensors, canonical=canonical, ignorable=ignorable,
                        device=device, dtype=dtype)
    return ClipTextAdapter(model, tokenizer, read_layer=read_layer, read_norm=read_norm)
