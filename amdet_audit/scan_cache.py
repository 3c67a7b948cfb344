"""The result cache: an unchanged encoder scanned the same way is not scanned again.

Keyed by the target's file sha256s, the scan's version, the policy's thresholds, the seed, the device class
and the reference choice. Only the scan (components, references, evidence files) is cached: the file checks
run again and the policy (severities, fail_on, waivers and their expiry) is applied anew on every run, so a
waiver that expired since fails a cached result again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amdet_audit import __version__
from amdet_audit.cache import cache_root

CACHE_FORMAT = 5  # bump whenever the scan's outputs change within a release (4: real-input rules; 5: token_shift.size)


def scan_key(target: dict[str, Any], options: Any, device: str) -> str:
    """The cache key of one scan of ``target`` (its report record) under ``options`` on ``device``."""
    config = options.config.to_dict() if options.config is not None else None
    parts = {"format": CACHE_FORMAT, "version": __version__,
             "files": sorted((f["path"], f["sha256"]) for f in target.get("files", [])),
             "components": sorted(c["name"] for c in target.get("components", [])),
             "thresholds": asdict(options.policy.thresholds), "seed": options.search_seed,
             "device": device.split(":")[0], "reference": options.reference,
             "reference_free": options.reference_free, "config": config}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def scans_root() -> Path:
    """``$AMDET_AUDIT_CACHE_SCANS`` (e.g. a folder a CI job caches between runs), else <cache>/scans."""
    return Path(os.environ.get("AMDET_AUDIT_CACHE_SCANS") or cache_root() / "scans").expanduser()


def folder_of(key: str) -> Path:
    """Where the scan with ``key`` is kept."""
    return scans_root() / key[:2] / key


def load(key: str) -> dict[str, Any] | None:
    """The cached scan (``components``, ``reference``, ``started``, ``folder``), or None."""
    folder = folder_of(key)
    try:
        record = json.loads((folder / "scan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = [folder / rel for comp in record.get("components", []) for rel in comp.get("evidence_files", {}).values()]
    if record.get("format") != CACHE_FORMAT or not all(f.is_file() for f in files):
        return None  # another format, or partly deleted: scan again
    return {**record, "folder": str(folder)}


def store(key: str, components: list[dict[str, Any]], reference: dict[str, Any], started: str) -> None:
    """Keep a finished scan and copies of its evidence files (written whole, then renamed into place)."""
    folder = folder_of(key)
    if folder.is_dir():
        return
    tmp = folder.with_name(f".{key}.{time.time_ns()}.tmp")
    tmp.mkdir(parents=True)
    kept = []
    for comp in components:
        files = {}
        for name, path in (comp.get("evidence_files") or {}).items():
            (tmp / comp["name"]).mkdir(exist_ok=True)
            copy = tmp / comp["name"] / Path(path).name
            shutil.copyfile(path, copy)
            files[name] = str(copy.relative_to(tmp))
        kept.append({**comp, "evidence_files": files})
    record = {"format": CACHE_FORMAT, "key": key, "started": started, "components": kept, "reference": reference}
    (tmp / "scan.json").write_text(json.dumps(record), encoding="utf-8")
    try:
        tmp.rename(folder)
    except OSError:  # another process stored the same scan meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def restore(cached: dict[str, Any], out: Path, nested: bool) -> list[dict[str, Any]]:
    """The cached components with their evidence files copied into the new report folder ``out`` (new files
    only: nothing there is overwritten or followed)."""
    from amdet_audit.outputs import copy_new, make_new_dir

    source = Path(cached["folder"])
    components = []
    for comp in cached["components"]:
        dest = out / comp["name"] if nested else out
        files = {}
        if nested and comp.get("evidence_files"):
            make_new_dir(dest, "evidence folder")
        for name, rel in comp.get("evidence_files", {}).items():
            files[name] = str(copy_new(source / rel, dest / Path(rel).name))
        components.append({**comp, "evidence_files": files})
    return components
