"""Everything amdet-audit keeps between runs, in named stores under one root.

Stores: ``canaries`` (encoders the tool builds on first use, per version), ``tokenizers`` (the shipped CLIP
vocabulary written as tokenizer folders), ``configs`` (configs inferred for single-file checkpoints),
``scans`` (finished scans: an unchanged encoder scanned the same way is not scanned again), ``baselines`` (a
reference model's natural collapse, per reference digest and search configuration). Every entry is written
whole and renamed into place, so a crash or a concurrent run never leaves a half-written entry that a later
run would trust.

The scan store is keyed by the target's file sha256s, the scan's version and every choice that changes its
result (thresholds, seed, device class, reference, consumer, read layer, tokenizer, search knobs). Only the scan
(components, references, evidence files) is kept: the checks run again and the policy (severities, fail_on,
waivers and their expiry) is applied anew on every run, so a waiver that expired since fails a cached result
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amdet_audit import __version__

STORES = ("canaries", "scans", "baselines", "tokenizers", "configs")
#: bump whenever the scan's outputs change within a release (4: real-input rules; 5: token_shift.size; 6: decoded
#: token text in the evidence; 7: the light search preset and its --search choice; 8: a lone T5 read as the named
#: consumer reads its T5; 9: each probe's move cosine in the evidence; 10: whole characters tried where a probe is
#: a byte piece of one, byte pieces shown as the characters they spell; 11: the unknown piece an emoji types to
#: tried on vocabularies without byte fallback; 12: bidirectional towers' token rules judge typed input only; 13: a
#: typed probe shown as the text typed; 14: BERT-family towers try the pieces their fine-tune turned). What the
#: scan reads of each component is part of the key itself (scan_choices), so a changed read needs no bump.
CACHE_FORMAT = 14


def cache_root() -> Path:
    """``$AMDET_AUDIT_CACHE``, else ``$XDG_CACHE_HOME/amdet-audit``, else ``~/.cache/amdet-audit`` (read per call)."""
    if explicit := os.environ.get("AMDET_AUDIT_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amdet-audit"


def store(name: str) -> Path:
    """The folder of store ``name``; ``scans`` may live elsewhere: ``$AMDET_AUDIT_CACHE_SCANS`` (e.g. a folder a
    CI job caches between runs)."""
    if name not in STORES:
        raise ValueError(f"unknown cache store {name!r}; known: {', '.join(STORES)}")
    if name == "scans" and os.environ.get("AMDET_AUDIT_CACHE_SCANS"):
        return Path(os.environ["AMDET_AUDIT_CACHE_SCANS"]).expanduser()
    return cache_root() / name


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` whole (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


@contextmanager
def build_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file) while building something other processes may also want;
    ``on_wait`` is called once when another process holds it (before waiting for it).

    On systems without ``fcntl`` the lock is a no-op; builds stay safe (temp folder plus rename), only not
    deduplicated.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def baseline_key(ref_digest: str, knobs: dict[str, Any]) -> str:
    """The key of a reference's baseline: its weights digest, the search knobs, the tool version and the cache
    format (a baseline computed by an older scan within the release is not reused)."""
    text = f"{ref_digest}|{json.dumps(knobs, sort_keys=True)}|{__version__}|{CACHE_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_baseline(key: str) -> dict[str, float] | None:
    """A stored baseline, or None."""
    try:
        return json.loads((store("baselines") / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_baseline(key: str, baseline: dict[str, float]) -> None:
    """Keep a baseline."""
    write_json(store("baselines") / f"{key}.json", baseline)


def scan_key(target: dict[str, Any], choices: dict[str, Any]) -> str:
    """The cache key of one scan of ``target`` (its report record: files, a LoRA's base's files, components,
    notes) under ``choices``
    (every option that changes the scan's result; see :func:`amdet_audit.audit.run.scan_choices`)."""
    parts = {"format": CACHE_FORMAT, "version": __version__,
             "files": sorted((f["path"], f["sha256"]) for f in target.get("files", [])),
             "base": sorted((f["path"], f["sha256"]) for f in (target.get("base") or {}).get("files", [])),
             "components": sorted(c["name"] for c in target.get("components", [])),
             "tokenizer": [n for n in target.get("notes", []) if n.startswith("tokenizer:")], **choices}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def folder_of(key: str) -> Path:
    """Where the scan with ``key`` is kept."""
    return store("scans") / key[:2] / key


def load_scan(key: str) -> dict[str, Any] | None:
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


def store_scan(key: str, components: list[dict[str, Any]], reference: dict[str, Any], started: str) -> None:
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


def restore_scan(cached: dict[str, Any], out: Path, nested: bool) -> list[dict[str, Any]]:
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
