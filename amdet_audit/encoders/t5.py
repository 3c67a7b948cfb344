"""T5 encoders (``T5EncoderModel``: FLUX's text_encoder_2, SD3's text_encoder_3, PixArt's text encoder) behind the
Adapter protocol.

- Positions: none are added to the embeddings; each attention layer adds a relative position bias from
  bucketed distances. Vectors inserted into the token embeddings therefore need no position either, and the
  tower is driven through the model's own forward with ``inputs_embeds``.
- Attention is bidirectional. FLUX and SD3 pass no attention mask (the padding, id 0, is attended to), PixArt
  passes the tokenizer's mask; ``masked`` selects which, and the sequence length is the consumer's (FLUX 512
  tokens, SD3 256, PixArt 120 or 300; :mod:`amdet_audit.encoders.consumers`).
- No start token: SentencePiece pieces then ``</s>``, so inserted vectors go in front of the first piece.
- Pooled output: T5 has none; the adapter reports the mean of the final states over the real tokens (the
  prompt's pieces, ``</s>`` and any inserted vectors), a summary the scan scores beside the sequence.
- Weights: ``shared.weight`` is the embedding table; ``encoder.embed_tokens.weight`` is the same tensor (tied).
  A checkpoint may hold either or both; both must then be equal, or the files are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from amdet_audit.encoders.base import EncoderOutput, PaddedTokenizerMixin
from amdet_audit.encoders.insertion import insert_at, shift_mask
from amdet_audit.encoders.weights import (
    check_budget,
    declared_shapes,
    local_tokenizer,
    materialize,
    read_weights,
    with_layers,
)
from amdet_audit.errors import ConfigFileError, TokenizerError, WeightsError, one_line
from amdet_audit.sources.model import Component

#: the sequence a lone T5 encoder is read at when no consumer names one (FLUX reads 512, SD3 256; 64 is
#: SigLIP's length too, and keeps the lab's T5 zoo affordable on a CPU); unmasked, as FLUX and SD3 read it
DEFAULT_LENGTH = 64
MAX_LENGTH = 512  # FLUX's, the longest consumer's


def real_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] 1 on every position up to and including the first ``</s>`` (all of a row that has none)."""
    is_eos = (ids == eos_id).int()
    first = torch.where(is_eos.any(dim=1), is_eos.argmax(dim=1), torch.full_like(is_eos[:, 0], ids.shape[1] - 1))
    return (torch.arange(ids.shape[1], device=ids.device)[None] <= first[:, None]).long()


class T5TextAdapter(PaddedTokenizerMixin):
    """A frozen ``T5EncoderModel`` the scan drives from token embeddings (see :mod:`amdet_audit.encoders.base`)."""

    family = "t5"
    causal = False
    insert_position = 0

    def __init__(self, model: nn.Module, tokenizer: Any | None, *, read_layer: int = -1,
                 length: int = DEFAULT_LENGTH, masked: bool = False) -> None:
        if not all(hasattr(model, part) for part in ("shared", "encoder")):
            raise TypeError(f"{type(model).__name__} is not a T5 encoder (no shared/encoder)")
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.tokenizer = tokenizer
        self.num_layers = int(self.config.num_layers)
        if not -(self.num_layers + 1) <= read_layer <= -1:
            raise ValueError(f"read_layer must be in -1..-{self.num_layers + 1}, got {read_layer}")
        if not 2 <= length <= MAX_LENGTH:
            raise ValueError(f"length must be in 2..{MAX_LENGTH}, got {length}")
        self.read_layer = read_layer
        self.masked = masked
        self.attends_padding = not masked
        self.hidden_size = int(self.config.d_model)
        self.max_positions = MAX_LENGTH  # relative positions: any length; the longest consumer's bounds it
        self.max_length = length
        self.bos_id = -1
        if tokenizer is None:
            self.eos_id, self.pad_id = int(self.config.eos_token_id), int(self.config.pad_token_id)
        else:
            self.eos_id, self.pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def token_embedding_matrix(self) -> torch.Tensor:
        """[V, D] the shared embedding table (detached, shares storage)."""
        return self.model.shared.weight.detach()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] token embeddings (T5 adds no positions)."""
        return self.model.shared(ids.to(self.device))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] what the first layer sees: the token embeddings themselves."""
        return self.embed_tokens(ids)

    def forward(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        insert: torch.Tensor | None = None,
        token_embeds: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Run the encoder on [B, T] ids; see :meth:`amdet_audit.encoders.base.Adapter.forward`.

        attention_mask: [B, T] padding mask; None derives it from the ids when the adapter is ``masked`` and
            passes none otherwise (FLUX, SD3).
        """
        ids = self._check_ids(ids)
        tokens = self.embed_tokens(ids) if token_embeds is None else token_embeds.to(self.device, self.dtype)
        if tokens.shape[:2] != ids.shape:
            raise ValueError(f"token_embeds {list(tokens.shape)} do not match ids {list(ids.shape)}")
        real = real_mask(ids, self.eos_id) if attention_mask is None else attention_mask.to(self.device).long()
        if insert is not None:
            tokens = insert_at(tokens, insert, self.insert_position)
            real = shift_mask(real, insert.shape[-2], self.insert_position)
        out = self.model(inputs_embeds=tokens, attention_mask=real if self.masked else None,
                         output_hidden_states=self.read_layer != -1, return_dict=True)
        last = out.last_hidden_state  # [B, T, D] after the final layer norm
        read = last if self.read_layer == -1 else out.hidden_states[self.read_layer]
        weights = real.to(last.dtype).unsqueeze(-1)  # [B, T, 1]
        pooled = (last * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # [B, D] mean over real tokens
        return EncoderOutput(read=read, last=last, pooled=pooled)

    __call__ = forward

    def describe(self) -> dict[str, object]:
        """JSON-ready architecture facts for reports."""
        facts = {**self.common_facts(), "heads": int(self.config.num_heads), "causal": False,
                 "read_layer": self.read_layer, "pooling": "mean_real (T5 has no pooled output)",
                 "projection_dim": None, "masked": self.masked}
        return facts


# ---- loading: config, tokenizer and checked weights -> T5TextAdapter ----------------------------------------

MODEL_TYPES = ("t5",)
ARCHITECTURES = ("T5EncoderModel",)
SHARED, TIED = "shared.weight", "encoder.embed_tokens.weight"
#: a full encoder-decoder checkpoint's other parts, not part of the encoder
T5_IGNORED_PREFIXES = ("decoder.", "lm_head.")


MAX_EXTRA_IDS = 1000  # T5 tokenizers append 100 sentinel tokens; the config's count is built into a list


def load_t5_tokenizer(component: Component) -> Any:
    """The component's T5 tokenizer (tokenizer.json or spiece.model; local files only). Its config's
    ``extra_ids`` (a count transformers expands into a list) must be a whole number up to MAX_EXTRA_IDS."""
    import transformers

    from amdet_audit.sources import safe_files

    folder = component.tokenizer_path
    if folder is None or not any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise TokenizerError(f"no tokenizer found for {component.name} (expected tokenizer.json or spiece.model)")
    settings = folder / "tokenizer_config.json"
    data = safe_files.read_json(settings) if settings.is_file() else {}
    extra = data.get("extra_ids", 0) if isinstance(data, dict) else 0
    if isinstance(extra, bool) or not isinstance(extra, int) or not 0 <= extra <= MAX_EXTRA_IDS:
        raise TokenizerError(f"{settings}: extra_ids must be a whole number from 0 to {MAX_EXTRA_IDS}")
    tokenizer = local_tokenizer(transformers.T5Tokenizer, folder, f"T5 tokenizer for {component.name}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise TokenizerError(f"{folder}: T5 tokenizer for {component.name} lacks an end or pad token")
    return tokenizer


def build(
    component: Component,
    config: Mapping[str, Any],
    *,
    device: torch.device | str,
    dtype: torch.dtype | None,
    read_layer: int,
    read_norm: bool | None = None,
    length: int | None = None,
    masked: bool | None = None,
) -> T5TextAdapter:
    """The T5 family builder: config, tokenizer, checked weights -> T5TextAdapter read at ``length`` tokens
    (default :data:`DEFAULT_LENGTH`), with the padding mask when ``masked``. ``read_norm`` does not apply."""
    from transformers import T5Config, T5EncoderModel

    try:
        t5_config = T5Config.from_dict({**dict(config), "is_encoder_decoder": False, "use_cache": False})
    except Exception as exc:  # transformers raises TypeError, ValueError or strict-dataclass errors
        raise ConfigFileError(f"{component.config_path}: not a valid T5 config ({one_line(exc)})") from exc
    tokenizer = load_t5_tokenizer(component)
    outer = component.key_prefix

    def keep(key: str) -> bool:
        return key.startswith(outer) and not key.removeprefix(outer).startswith(T5_IGNORED_PREFIXES)

    tensors = read_weights(component, keep=keep) if component.weight_format == "pickle" else None
    declared = declared_shapes(component, keep, tensors)
    names = {key.removeprefix(outer) for key in declared}
    table = SHARED if SHARED in names else TIED  # the file's embedding table, under either name
    if table == TIED:
        declared = {(outer + SHARED if k == outer + TIED else k): v for k, v in declared.items()}

    def canonical(key: str) -> str:
        return key.removeprefix(outer)

    def ignorable(name: str) -> bool:
        return name == TIED or name.startswith(T5_IGNORED_PREFIXES)  # TIED: the model's alias of SHARED

    check_budget(lambda n: T5EncoderModel(with_layers(t5_config, n)), int(t5_config.num_layers), declared,
                 canonical=canonical, ignorable=ignorable, where=component.config_path)
    tensors = tensors if tensors is not None else read_weights(component, keep=keep)
    if table == TIED:  # the file names its table by the tied alias only: read it as shared.weight
        tensors = {(outer + SHARED if k == outer + TIED else k): v for k, v in tensors.items()}
    if SHARED in names and TIED in names:
        first, second = tensors[outer + SHARED][0], tensors[outer + TIED][0]
        if not torch.equal(first, second):
            raise WeightsError(f"{component.config_path.parent}: {SHARED} and {TIED} differ; T5 ties them, and "
                               "which one a loader uses decides what the model does")
    model = materialize(component, lambda: T5EncoderModel(t5_config), tensors, canonical=canonical,
                        ignorable=ignorable, device=device, dtype=dtype, aliases={TIED: SHARED})
    model.tie_weights()
    return T5TextAdapter(model, tokenizer, read_layer=read_layer, length=length or DEFAULT_LENGTH,
                         masked=bool(masked))
