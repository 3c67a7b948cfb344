"""Consumers: which outputs of a text encoder a pipeline feeds downstream, so that the scan scores those.

A pipeline folder's ``model_index.json`` names its class (``_class_name``); ``--consumer`` overrides it. What
each reads (diffusers 0.42 ``encode_prompt``, transformers' text models):

| consumer | sequence the denoiser receives | pooled output used |
|---|---|---|
| ``clip`` (a lone encoder) | last layer (after the final LayerNorm) | pooled (projected if it projects) |
| ``sd1`` / ``sd2`` | last layer after the final LayerNorm (``last_hidden_state``) | none |
| ``sdxl`` | ``hidden_states[-2]`` of both encoders, no final LayerNorm | text_encoder_2's projected pooled |
| ``sd3`` | CLIPs: ``hidden_states[-2]``, no final norm; T5: last layer, 256 tokens, no mask | both CLIPs' projected |
| ``flux`` | CLIP: none; T5 (text_encoder_2): last layer, 512 tokens, no mask | CLIP's ``pooler_output`` |
| ``pixart`` | T5: last layer, 300 tokens (PixArt-Sigma; Alpha reads 120), with the padding mask | none |

A lone encoder (the ``clip`` consumer, whatever its family) is scored on its last layer and its pooled output:
CLIP's end-token state (projected when it projects), SigLIP's last position through its head, the mean over
real tokens for BERT (as sentence-transformers pools) and T5 (which has no pooled output of its own); a lone T5
is read at 64 tokens without a mask (:data:`amdet_audit.encoders.t5.DEFAULT_LENGTH`). A lone T5 scanned for a
consumer (``--consumer sd3``, ``flux`` or ``pixart``: a ``t5xxl`` file or folder published on its own) is read as
that pipeline reads its T5, not as it reads its CLIP encoders.

Clip skip (``--read-layer N``, N negative, counted from the last layer as ``hidden_states[N]``): SD 1.x/2.x
read ``hidden_states[N]`` and then apply the final LayerNorm (diffusers' ``clip_skip=c`` is N = -(c+1); the
web UIs' "clip skip 2" is N = -2); SDXL and SD3 read ``hidden_states[N]`` without it (``clip_skip=c`` is
N = -(c+2)). The scan's features always include the encoder's pooled output beside the sequence: a pooled
output the pipeline ignores is scored all the same (a superset of what the consumer reads). A consumer that
reads no sequence (FLUX's CLIP) is scanned on the pooled output alone (``ScanConfig.pooled_only``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from amdet_audit.errors import UsageError


@dataclass(frozen=True)
class Read:
    """The sequence a consumer reads from one encoder: ``hidden_states[layer]``, with the final LayerNorm or not."""

    layer: int = -1
    final_norm: bool = True
    pooled: str = "pooled"  # what of the pooled output the consumer uses: "pooled", "projected" or "none"
    sequence: bool = True  # whether the consumer reads the token sequence at all (FLUX's CLIP does not)
    length: int | None = None  # tokens the consumer pads to, where a family's consumers differ (T5); None: default
    masked: bool | None = None  # whether the consumer passes the padding mask (T5); None: the family's default

    def describe(self) -> str:
        """``last+norm``, ``hidden[-2]``, ``hidden[-2]+norm``, or ``pooled`` for a pooled-only read."""
        if not self.sequence:
            return "pooled"
        if self.layer == -1 and self.final_norm:
            return "last+norm"
        return f"hidden[{self.layer}]" + ("+norm" if self.final_norm else "")


@dataclass(frozen=True)
class Consumer:
    """A pipeline or use: its name, and the read of each component (``*``: any component)."""

    name: str
    description: str
    reads: dict[str, Read]
    skip_norm: bool  # whether a clip-skip read keeps the final LayerNorm (SD 1.x/2.x) or not (SDXL, SD3)
    #: family -> the read of an encoder of that family whatever its slot, before the slot's own read: a lone T5
    #: scanned for SD3 or FLUX is read as their T5, not as their CLIP slots (``*``), and a CLIP in a slot FLUX
    #: gives its T5 (another pipeline's folder scanned with ``--consumer flux``) as FLUX reads a CLIP
    by_family: dict[str, Read] = field(default_factory=dict)

    def read(self, component: str, layer: int | None = None, family: str | None = None) -> Read:
        """The read of ``component`` (of adapter ``family``, e.g. ``t5``, where known); ``layer``
        (``--read-layer``) moves its layer, clip-skip style."""
        base = (self.by_family.get(family or "") or self.reads.get(component) or self.reads.get("*")
                or Read())
        if layer is None:
            return base
        self.check_layer(layer)
        if not base.sequence:
            raise UsageError(f"--read-layer: the {self.name} consumer reads no hidden layer of {component}, only its "
                             "pooled output")
        return Read(layer=layer, final_norm=self.skip_norm, pooled=base.pooled, length=base.length,
                    masked=base.masked)

    def check_layer(self, layer: int | None) -> None:
        """Refuse a ``--read-layer`` no component could be read at: not negative, or a consumer that reads no
        sequence of any encoder (each component's read refuses it where that one reads only a pooled output)."""
        if layer is None:
            return
        if layer >= 0:
            raise UsageError(f"--read-layer must be negative (hidden_states counted from the end), not {layer}")
        if not any(r.sequence for r in (*self.reads.values(), *self.by_family.values())):
            raise UsageError(f"--read-layer: the {self.name} consumer reads no hidden layer, only pooled outputs")

    def record(self, read: Read) -> dict[str, object]:
        """The report's record of how one component was read (``read`` from :meth:`read`)."""
        return {"name": self.name, "description": self.description, **asdict(read), "reads": read.describe()}


SEQUENCE_LAST = Read(-1, True, "none")
PENULTIMATE = Read(-2, False, "none")
FLUX_T5 = Read(-1, True, "none", length=512, masked=False)  # FluxPipeline._get_t5_prompt_embeds
SD3_T5 = Read(-1, True, "none", length=256, masked=False)  # StableDiffusion3Pipeline._get_t5_prompt_embeds
PIXART_T5 = Read(-1, True, "none", length=300, masked=True)  # PixArtSigmaPipeline.encode_prompt
FLUX_CLIP = Read(-1, True, "pooled", sequence=False)  # FluxPipeline._get_clip_prompt_embeds: pooler_output alone
CONSUMERS: dict[str, Consumer] = {
    "clip": Consumer("clip", "a lone CLIP text encoder: retrieval, or an unknown pipeline", {"*": Read()}, True),
    "sd1": Consumer("sd1", "Stable Diffusion 1.x", {"*": SEQUENCE_LAST}, True),
    "sd2": Consumer("sd2", "Stable Diffusion 2.x", {"*": SEQUENCE_LAST}, True),
    "sdxl": Consumer("sdxl", "Stable Diffusion XL", {"*": PENULTIMATE,  # a lone encoder: read as both are
                                                     "text_encoder_2": Read(-2, False, "projected")}, False),
    "sd3": Consumer("sd3", "Stable Diffusion 3", {"*": Read(-2, False, "projected"), "text_encoder_3": SD3_T5},
                    False, {"t5": SD3_T5}),
    "flux": Consumer("flux", "FLUX.1", {"*": FLUX_CLIP, "text_encoder_2": FLUX_T5}, True,
                     {"t5": FLUX_T5, "clip": FLUX_CLIP}),
    "pixart": Consumer("pixart", "PixArt-Sigma (its T5 encoder)", {"*": PIXART_T5}, True),
}
#: model_index.json ``_class_name`` prefix -> consumer (longest prefix first: StableDiffusionXL... before
#: StableDiffusion...); ControlNet, adapter and PAG variants feed their denoiser the same encoder outputs
PIPELINES: dict[str, str] = {"StableDiffusionXL": "sdxl", "StableDiffusion3": "sd3", "StableDiffusion": "sd1",
                             "Flux": "flux", "PixArt": "pixart"}


def pipeline_consumer(pipeline_class: str | None) -> str:
    """The consumer of a pipeline class (``clip`` for a lone encoder or a pipeline not modelled)."""
    for prefix in sorted(PIPELINES, key=len, reverse=True):
        if (pipeline_class or "").startswith(prefix) and (pipeline_class or "").endswith("Pipeline"):
            return PIPELINES[prefix]
    return "clip"


def consumer_for(requested: str | None, pipeline_class: str | None) -> Consumer:
    """``--consumer`` when given, else the pipeline class's consumer, else ``clip`` (a lone encoder)."""
    if requested is not None:
        if requested not in CONSUMERS:
            raise UsageError(f"--consumer {requested!r}: known consumers are {', '.join(CONSUMERS)}")
        return CONSUMERS[requested]
    return CONSUMERS[pipeline_consumer(pipeline_class)]
