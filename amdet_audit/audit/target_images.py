"""Ask image plugins (hook ``amdet_audit_target_images``) to render each component's target feature."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pluggy

log = logging.getLogger(__name__)


def render_target_images(pm: pluggy.PluginManager, entries: list[dict[str, Any]], out: Path,
                         options: dict[str, str]) -> None:
    """Add ``target_images`` (images per plugin, or the plugin's error) to every scanned component entry.

    Each plugin writes into ``target-images/<component>/<plugin>/``, a folder created new for it."""
    from amdet_audit.outputs import make_new_dir

    impls = pm.hook.amdet_audit_target_images.get_hookimpls()
    created: set[Path] = set()
    for entry in entries:
        feature = (entry.get("evidence_files") or {}).get("target_feature")
        if not feature or not impls:
            continue
        rendered = []
        for impl in impls:
            folder = out / "target-images" / entry["name"] / impl.plugin_name
            for path in (folder.parent.parent, folder.parent, folder):  # new folders, made here: none followed
                if path not in created:
                    make_new_dir(path, "image folder")
                    created.add(path)
            try:
                images = impl.function(component=entry, target_feature=feature, out_dir=str(folder),
                                       options=options)
            except Exception as err:  # third-party code: the audit stands, the failure is reported
                log.warning("plugin %s could not render target images: %s", impl.plugin_name, err)
                rendered.append({"plugin": impl.plugin_name, "error": f"{type(err).__name__}: {err}"})
                continue
            for image in images or []:
                rendered.append({"plugin": impl.plugin_name, "path": str(image["path"]),
                                 "caption": str(image.get("caption", ""))})
        if rendered:
            entry["target_images"] = rendered
