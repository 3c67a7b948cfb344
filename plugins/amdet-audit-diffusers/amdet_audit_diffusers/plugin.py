"""The pluggy hooks of the plugin (entry point ``diffusers`` in the group ``amdet_audit``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pluggy

from amdet_audit_diffusers.render import RenderSettings, render

hookimpl = pluggy.HookimplMarker("amdet_audit")


@hookimpl
def amdet_audit_target_images(component: dict[str, Any], target_feature: str, out_dir: str,
                              options: dict[str, str]) -> list[dict[str, str]] | None:
    """Render the target feature when a pipeline is named (``diffusers.pipeline`` or the environment)."""
    pipeline = options.get("diffusers.pipeline") or os.environ.get("AMDET_AUDIT_DIFFUSERS_PIPELINE")
    if not pipeline:
        return None
    return render(target_feature, Path(out_dir), RenderSettings.from_options(options, pipeline))
