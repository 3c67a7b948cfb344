"""The SigLIP text tower (``SiglipTextModel``, or the text tower inside ``SiglipModel``) behind the Adapter protocol.

A SigLIP text tower is a CLIP-like transformer (token + learned position embeddings, pre-norm layers, a final
LayerNorm) with three differences, each checked against transformers' own forward in tests:

- bidirectional attention: every token sees every other, padding included, since SigLIP runs with no
  attention mask (prompts are padded to 64 tokens with ``</s>``, as the model was trained);
- no start token: the tokenizer (SentencePiece) emits the prompt's pieces then ``</s>``, so inserted vectors
  go in front of the first piece (``insert_position`` 0);
- pooling: the final state of the LAST position (a padding token for any prompt shorter than 64) through a
  linear ``head``.

The adapter reuses :class:`~amdet_audit.encoders.clip.ClipTextAdapter`'s way of driving the parts (embeddings,
encoder with an explicit additive mask, final LayerNorm, read layer), with the mask and pooling above.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from amdet_audit.encoders.clip import ClipTextAdapter, causal_mask, locate_parts
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


class SiglipTextAdapter(ClipTextAdapter):
    """A frozen SigLIP text tower the scan drives from token embeddings (see :mod:`amdet_audit.encoders.base`)."""

    family = "siglip"
    causal = False
    attends_padding = True
    insert_position = 0

    def __init__(self, model: nn.Module, tokenizer: Any | None, *, read_layer: int = -1,
                 read_norm: bool | None = None) -> None:
        super().__init__(model, tokenizer, read_layer=read_layer, read_norm=read_norm)
        tower, _ = locate_parts(model)
        head = getattr(tower, "head", None)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"{type(model).__name__} has no linear SigLIP text head")
        self._projection = head

    def _special_ids(self, tokenizer: Any | None) -> tuple[int, int, int]:
        """(-1: no start token, EOS, pad): the tokenizer's, else the config's."""
        source = tokenizer if tokenizer is not None else self.config
        eos = tokenizer.eos_token_id if tokenizer is not None else self.config.eos_token_id
        return -1, int(eos), int(source.pad_token_id)

    def attention(self, length: int, key_mask: torch.Tensor | None) -> torch.Tensor | None:
        """No mask (every position sees every other), or the padding mask when a consumer passes one."""
        if key_mask is None:
            return None
        return causal_mask(length, self.dtype, self.device, key_mask, causal=False)

    def pool(self, last: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
        """The final state of the last position, as SiglipTextModel pools."""
        return last[:, -1]

    def describe(self) -> dict[str, object]:
        """JSON-ready architecture facts for reports."""
        return {**super().describe(), "causal": False, "pooling": "last_position",
                "projection_dim": int(self._projection.out_features)}


# ---- loading: config, tokenizer and checked weights -> SiglipTextAdapter ----------------------------------------

MODEL_TYPES = ("siglip_text_model", "siglip")
ARCHITECTURES = ("SiglipTextModel", "SiglipModel")
STATE_PREFIX = "text_model."
OTHER_TOWER_PREFIXES = ("vision_model.", "logit_scale", "logit_bias")


def siglip_text_config(config: Mapping[str, Any], where: Any) -> tuple[Any, bool]:
    """(SiglipTextConfig, is_full_siglip) from a text-tower config or a full SiglipModel config."""
    from transformers import SiglipConfig, SiglipTextConfig

    full = config.get("model_type") == "siglip" or "SiglipModel" in (config.get("architectures") or [])
    try:
        text = SiglipConfig.from_dict(dict(config)).text_config if full else SiglipTextConfig.from_dict(dict(config))
    except Exception as exc:  # transformers raises TypeError, ValueError or strict-dataclass errors
        raise ConfigFileError(f"{where}: not a valid SigLIP text config ({one_line(exc)})") from exc
    return text, full


def load_siglip_tokenizer(component: Component, max_positions: int) -> Any:
    """The component's SentencePiece SiglipTokenizer (local files only), capped at the model's positions."""
    import transformers

    folder = component.tokenizer_path
    if folder is None or not (folder / "spiece.model").is_file():
        raise TokenizerError(f"no tokenizer found for {component.name} (expected spiece.model in "
                             f"{folder or component.config_path.parent})")
    # sp_model_kwargs from the folder's tokenizer_config.json would reach SentencePiece as is (another model
    # file, sampling): always none
    tokenizer = local_tokenizer(transformers.SiglipTokenizer, folder, f"SigLIP tokenizer for {component.name}",
                                sp_model_kwargs={})
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise TokenizerError(f"{folder}: SigLIP tokenizer for {component.name} lacks an end or pad token")
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
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
) -> SiglipTextAdapter:
    """The SigLIP family builder: config, tokenizer, checked weights -> SiglipTextAdapter."""
    from transformers import SiglipTextModel

    text_config, _full = siglip_text_config(config, component.config_path)
    tokenizer = load_siglip_tokenizer(component, int(text_config.max_position_embeddings))

    def ignorable(name: str) -> bool:
        return name.startswith(OTHER_TOWER_PREFIXES) or name == POSITION_IDS

    keep, canonical = prefixed_keys(STATE_PREFIX, ignorable, component.key_prefix)
    tensors = read_weights(component, keep=keep) if component.weight_format == "pickle" else None
    declared = declared_shapes(component, keep, tensors)
    layers = int(text_config.num_hidden_layers)
    check_budget(lambda n: SiglipTextModel(with_layers(text_config, n)), layers, declared,
                 canonical=canonical, ignorable=ignorable, where=component.config_path)
    tensors = tensors if tensors is not None else read_weights(component, keep=keep)
    model = materialize(component, lambda: SiglipTextModel(text_config), tensors, canonical=canonical,
                        ignorable=ignorable, device=device, dtype=dtype)
    return SiglipTextAdapter(model, tokenizer, read_layer=read_layer, read_norm=read_norm)
