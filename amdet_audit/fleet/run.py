"""The fleet driver: plan the targets, resume what a previous run finished, scan identical encoders once, hand
the rest to an executor, and keep fleet.json consistent after every finished target (and on Ctrl-C).

Hub targets: the driver resolves each revision to a commit sha once (an API call, no download); workers
download that commit. Identical encoders: targets whose files (paths and sha256) and per-target options are
the same form a group; its first target is scanned, the others wait for it and then find its result in the
scan cache (each still gets its own report folder). Shared reference baselines: the cache keeps each
reference's baseline once, and a lock makes concurrent workers compute it once
(amdet_audit.audit.components.cached_baseline); workers on several machines share them when
``AMDET_AUDIT_CACHE`` points to shared storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from amdet_audit import __version__
from amdet_audit.errors import AmdetError, UsageError
from amdet_audit.fleet.executors import Executor
from amdet_audit.fleet.outputs import FLEET_SCHEMA_VERSION, counts, write_renderings, write_state
from amdet_audit.fleet.plan import Entry

Progress = Callable[[str], None]


@dataclass
class FleetSettings:
    """What every target of the fleet is scanned with (an entry's own reference, component or consumer win)."""

    reference: str | None = None
    reference_free: bool = False
    device: str = "cpu"
    policy: str | None = None
    seed: int | None = None
    search: str = "auto"
    checks: list[str] | None = None
    consumer: str | None = None
    use_cache: bool = True
    plugins: bool = True
    offline: bool | None = None
    allow_pickle: bool = False
    base: str | None = None
    threads: int | None = None  # torch threads per scan
    retry_failed: bool = False
    argv: list[str] = field(default_factory=list)

    def spec_fields(self) -> dict[str, Any]:
        """The settings a task spec carries."""
        return {k: v for k, v in self.__dict__.items() if k not in ("retry_failed", "argv")}

    def digest(self) -> str:
        """What changes the fleet's results (not how it runs: threads, retries), for resuming safely."""
        kept = {k: v for k, v in self.spec_fields().items() if k != "threads"}
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def now() -> str:
    """The time, for fleet.json."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_fleet(out: Path, entries: list[Entry], settings: FleetSettings) -> dict[str, Any]:
    """The fleet document: a new one in a new or empty folder ``out``, or the one a previous run left there
    (its finished targets kept; targets it did not list added). Anything else in ``out`` is never touched."""
    state = out / "fleet.json"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out}: not a folder")
    if state.is_file():
        try:
            document = json.loads(state.read_text(encoding="utf-8"))
            known = {r["target"]: r for r in document["targets"]}
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{state}: not a fleet.json this tool wrote; use another --out") from err
        if document.get("settings") != settings.digest():
            raise UsageError(f"{state}: this fleet was scanned with other options (reference, policy, search...); "
                             "rerun it with the same options, or use another --out")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out}: a folder that holds other files and no fleet.json; use a new one")
    else:
        out.mkdir(parents=True, exist_ok=True)
        document, known = {"started": now()}, {}
    records = []
    for i, item in enumerate(entries):
        record = known.get(item.target) or {"target": item.target, "status": "pending"}
        changed = record.get("entry", item.to_dict()) != item.to_dict()  # its own reference or consumer changed
        record.update(index=i, entry=item.to_dict())
        if record["status"] not in ("done", "error") or changed or (record["status"] == "error"
                                                                    and settings.retry_failed):
            record["status"] = "pending"
        records.append(record)
    document.update(schema_version=FLEET_SCHEMA_VERSION, tool={"name": "amdet-audit", "version": __version__},
                    command=settings.argv, settings=settings.digest(), targets=records, updated=now())
    return document


def group_key(item: Entry) -> str | None:
    """A content key of a local, canary or packaged target (files and per-target options); None for a hub
    target (resolving it here would download it on the driver) or one that cannot be resolved."""
    from amdet_audit.sources import resolve, target_kind

    if target_kind(item.target) == "hub":
        return None
    try:
        resolved = resolve(item.target, component=item.component)
    except Exception:  # any failure is the target's own: its task will say why
        return None
    files = sorted((f.path, f.sha256) for f in resolved.files)
    data = {"files": files, "reference": item.reference, "component": item.component, "consumer": item.consumer}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def pin_hub_target(record: dict[str, Any], offline: bool | None) -> None:
    """A hub target's revision resolved once, here, to a commit sha (``record["pinned"]``): every worker then
    downloads that commit, whatever the branch does meanwhile. One that cannot be resolved stays as given (its
    task reports why)."""
    from amdet_audit.sources import target_kind
    from amdet_audit.sources.hub import pinned_target

    if target_kind(record["target"]) != "hub":
        return
    try:
        record["pinned"] = pinned_target(record["target"], offline=offline)
    except AmdetError:
        record.pop("pinned", None)


def whole_path(target: str) -> str:
    """A local TARGET as an absolute path (a worker may run in another folder); other TARGETs unchanged."""
    from amdet_audit.sources import target_kind

    return str(Path(target).expanduser().absolute()) if target_kind(target) in ("local", "file") else target


def folder_for(out: Path, record: dict[str, Any]) -> str:
    """A new report folder name for one attempt at a target (``targets/0003-name``, then ``-2``...)."""
    stem = f"targets/{record['index']:04d}-{Entry(**record['entry']).name}"
    name, n = stem, 1
    while (out / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def run_fleet(entries: list[Entry], out: Path, settings: FleetSettings, executor: Executor,
              progress: Progress | None = None) -> dict[str, Any]:
    """Scan every pending target; return the final fleet document (also written to ``out``)."""
    document = open_fleet(out, entries, settings)
    document["executor"] = executor.description
    records = document["targets"]
    pending = [r for r in records if r["status"] == "pending"]
    leaders: dict[str, dict[str, Any]] = {}
    waiting: dict[str, list[dict[str, Any]]] = {}
    queue: list[dict[str, Any]] = []
    for record in pending:
        pin_hub_target(record, settings.offline)
        key = group_key(Entry(**record["entry"])) if settings.use_cache else None
        if key is not None and key in leaders:
            record["duplicate_of"] = leaders[key]["target"]
            waiting.setdefault(key, []).append(record)
            continue
        if key is not None:
            leaders[key] = record
            record["group"] = key
        queue.append(record)
    write_state(out, document)
    running: dict[object, dict[str, Any]] = {}
    started = time.perf_counter()
    done_here = 0
    try:
        while queue or running:
            while queue and len(running) < executor.capacity:
                record = queue.pop(0)
                record["folder"] = folder_for(out, record)
                (out / record["folder"]).parent.mkdir(parents=True, exist_ok=True)
                record["status"], record["attempts"] = "running", record.get("attempts", 0) + 1
                spec = {**settings.spec_fields(), "index": record["index"],
                        "target": record.get("pinned") or whole_path(record["target"]),
                        "entry": record["entry"], "folder": str(out / record["folder"]),
                        "folder_name": record["folder"]}
                running[executor.submit(spec)] = record
            handle, result = executor.next_done(list(running))
            record = running.pop(handle)
            record.update({k: v for k, v in result.items() if k not in ("index", "target", "folder")})
            record["status"] = "done" if result.get("status") == "done" else "error"
            queue[:0] = waiting.pop(record.pop("group", None), [])  # identical encoders: now a cache hit
            done_here += 1
            document["updated"] = now()
            write_state(out, document)
            if progress:
                progress(progress_line(record, document, len(running), done_here, time.perf_counter() - started))
    except KeyboardInterrupt:
        executor.close(cancel=True)
        for record in records:
            if record["status"] == "running":
                record["status"] = "pending"  # rerun the same command to finish it
        document["interrupted"] = True
        finish(out, document)
        raise
    executor.close()
    document.pop("interrupted", None)
    finish(out, document)
    return document


def finish(out: Path, document: dict[str, Any]) -> None:
    """fleet.json and its renderings, as the fleet stands now."""
    document["updated"] = now()
    write_state(out, document)
    write_renderings(out, document)


def progress_line(record: dict[str, Any], document: dict[str, Any], running: int, done_here: int,
                  elapsed: float) -> str:
    """One line per finished target: its verdict, the tally, what is running, and an ETA."""
    tally = counts(document["targets"])
    left = tally["pending"] - running
    eta = f", ETA {elapsed / done_here * (left + running):.0f} s" if left + running else ""  # wall s per finish
    return (f"[{tally['finished']}/{tally['total']}] {record['target']}: {record.get('label')} "
            f"({record.get('seconds', 0):.1f} s); {tally['failed']} failed, {tally['errors']} errors, "
            f"{running} running{eta}")


def stderr_progress(line: str) -> None:
    """Progress on stderr (stdout stays for the summary)."""
    print(line, file=sys.stderr, flush=True)


def threads_per_scan(jobs: int, ray_cpus: float | None) -> int:
    """Torch threads for each scan: the cores divided between the local jobs, or a Ray task's CPUs."""
    if ray_cpus is not None:
        return max(1, int(ray_cpus))
    return max(1, (os.cpu_count() or 1) // jobs)
