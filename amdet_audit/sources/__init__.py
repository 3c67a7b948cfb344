"""TARGET -> files on local disk with provenance (:class:`ResolvedTarget`).

TARGET forms: ``canary:NAME``; ``package:NAME`` (a model shipped in an installed Python package);
``hf://org/name[@rev]``; an existing local folder or file; ``org/name[@rev]``
(a hub repo id). A local path wins over a repo id of the same spelling, as in transformers.
"""

from __future__ import annotations

import re
from pathlib import Path

from amdet_audit.errors import SourceNotFoundError, UsageError
from amdet_audit.sources.model import Component, FileRecord, ResolvedTarget

__all__ = ["Component", "FileRecord", "ResolvedTarget", "resolve", "target_kind"]

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^\s@]+)?$")


def target_kind(target: str) -> str:
    """Which source handles ``target``: canary, package, hub, local or file."""
    if target.startswith("canary:"):
        return "canary"
    if target.startswith("package:"):
        return "package"
    if target.startswith("hf://"):
        return "hub"
    path = Path(target).expanduser()
    if path.exists():
        return "file" if path.is_file() else "local"
    if REPO_ID.match(target) and not target.startswith((".", "/", "~")):
        return "hub"
    return "file" if path.suffix else "local"


def resolve(
    target: str,
    *,
    revision: str | None = None,
    component: str | None = None,
    config: Path | None = None,
    offline: bool | None = None,
    allow_pickle: bool = False,
    cache_dir: Path | None = None,
    base: str | None = None,
) -> ResolvedTarget:
    """Turn a TARGET string into files on disk.

    Args:
        target: see the module docstring.
        revision: hub branch, tag or commit (also ``@rev`` in the target; not both).
        component: one pipeline component, e.g. ``text_encoder_2``.
        config: config.json for a single weights file.
        offline: hub from the local cache only (default: the HF_HUB_OFFLINE environment variable).
        allow_pickle: accept pickle weights (.bin/.pt/.ckpt), which can run code when loaded.
        cache_dir: hub cache folder (default: huggingface_hub's, from HF_HOME).
        base: for a text-encoder LoRA (a file, or a PEFT/diffusers LoRA folder), the model it is applied onto.

    Raises:
        SourceNotFoundError, UsageError, and the errors of the source that handles the target.
    """
    if not target.strip():
        raise UsageError("TARGET is empty")
    kind = target_kind(target)
    if config is not None and kind != "file":
        raise UsageError("--config applies to a single weights file only")
    if base is not None and kind in ("canary", "package", "hub"):
        raise UsageError(f"--base applies to a local LoRA file or folder only; {target} is a {kind} target")
    if kind == "canary":
        from amdet_audit.sources.canary import resolve_canary

        return resolve_canary(target.removeprefix("canary:"), input=target)
    if kind == "package":
        from amdet_audit.sources.packaged import resolve_packaged

        return resolve_packaged(target.removeprefix("package:"), input=target)
    if kind == "hub":
        return resolve_hub_target(target, revision=revision, component=component, offline=offline,
                                  allow_pickle=allow_pickle, cache_dir=cache_dir)
    if revision is not None:
        raise UsageError("--revision applies to hub targets only")
    from amdet_audit.sources.local import inspect_folder, resolve_file

    path = Path(target).expanduser()
    from amdet_audit.sources.lora import lora_folder_file

    lora = lora_folder_file(path) if kind == "local" and path.is_dir() else None
    if kind == "file" or lora is not None:
        resolved = resolve_file(lora or path, input=target, config=config, allow_pickle=allow_pickle, base=base,
                                resolve_base=lambda where: resolve(where, offline=offline, allow_pickle=allow_pickle,
                                                                  cache_dir=cache_dir))
    elif not path.exists():
        raise SourceNotFoundError(f"{target}: no such file or folder, and not a hub repo id (org/name)")
    else:
        resolved = inspect_folder(path, input=target, component=component, allow_pickle=allow_pickle)
    if base is not None and resolved.kind != "lora":
        raise UsageError(f"--base applies to a LoRA target only; {target} is not a LoRA")
    return resolved


def resolve_hub_target(target: str, *, revision: str | None, **kwargs) -> ResolvedTarget:
    """Split ``[hf://]org/name[@rev]`` and fetch it from the hub (or its cache)."""
    from amdet_audit.sources.hub import parse_repo_ref, resolve_hub

    repo_id, rev = parse_repo_ref(target)
    if rev is not None and revision is not None and rev != revision:
        raise UsageError(f"two revisions given: {target!r} and --revision {revision!r}")
    return resolve_hub(repo_id, revision=rev or revision, input=target, **kwargs)
