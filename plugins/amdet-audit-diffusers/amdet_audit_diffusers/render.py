"""Turn a target feature [T, D] into images with a StableDiffusionPipeline (prompt_embeds, no prompt)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RenderSettings:
    """How to sample: the AMDet paper's settings by default."""

    pipeline: str
    scheduler: str = "lms"
    steps: int = 25
    guidance: float = 7.5
    images: int = 4
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_options(cls, options: dict[str, str], pipeline: str) -> RenderSettings:
        """Settings from ``diffusers.*`` plugin options; a bad value raises ValueError naming the key."""
        def number(key: str, kind, default):
            raw = options.get(f"diffusers.{key}")
            try:
                return default if raw is None else kind(raw)
            except ValueError as err:
                raise ValueError(f"diffusers.{key} must be a {kind.__name__}, not {raw!r}") from err

        scheduler = options.get("diffusers.scheduler", "lms")
        if scheduler not in ("lms", "pipeline"):
            raise ValueError(f"diffusers.scheduler must be lms or pipeline, not {scheduler!r}")
        return cls(pipeline=pipeline, scheduler=scheduler, steps=number("steps", int, 25),
                   guidance=number("guidance", float, 7.5), images=number("images", int, 4),
                   seed=number("seed", int, 0), device=options.get("diffusers.device", "auto"))


def pipeline_class(where: str) -> str | None:
    """The ``_class_name`` of a local pipeline folder's model_index.json (None for hub ids)."""
    index = Path(where) / "model_index.json"
    return json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index.is_file() else None


def render(feature_file: str, out_dir: Path, settings: RenderSettings) -> list[dict[str, str]]:
    """Render ``settings.images`` images conditioned on the target feature; return their paths and captions."""
    import torch
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    kind = pipeline_class(settings.pipeline)
    if kind is not None and kind != "StableDiffusionPipeline":
        raise ValueError(f"{settings.pipeline} is a {kind}; only StableDiffusionPipeline (SD 1.x/2.x) is supported")
    device = settings.device if settings.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = StableDiffusionPipeline.from_pretrained(settings.pipeline, safety_checker=None,
                                                   requires_safety_checker=False)  # float32 weights
    if settings.scheduler == "lms":
        pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    feature = load_file(feature_file)["target_feature"].float()  # [T, D]
    width = pipe.unet.config.cross_attention_dim
    if feature.shape[-1] != width:
        raise ValueError(f"the target feature is {feature.shape[-1]} wide but {settings.pipeline}'s UNet reads "
                         f"{width}-wide features: name the pipeline this encoder belongs to")
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    result = pipe(prompt_embeds=feature.unsqueeze(0).to(device), negative_prompt="",
                  num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                  num_images_per_prompt=settings.images, generator=generator, output_type="pil")
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i, image in enumerate(result.images):
        path = out_dir / f"target-{i}.png"
        image.save(path)
        images.append({"path": str(path), "caption": f"target feature, image {i + 1} ({settings.scheduler}, "
                                                     f"{settings.steps} steps, guidance {settings.guidance}, "
                                                     f"seed {settings.seed})"})
    return images
