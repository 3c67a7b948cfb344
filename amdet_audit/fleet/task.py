"""One fleet target's audit, as a worker runs it (in this process, a local worker process or a Ray task): the
same audit as ``amdet-audit scan``, into the target's own report folder, summarised as a fleet record.

Everything a task needs travels in a plain dict (picklable for any executor); whatever happens inside, the
task returns a record, so one failing target never stops the others.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def key_scores(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """component -> check name -> score, from a report.json document."""
    out: dict[str, dict[str, float | None]] = {}
    for comp in report.get("components", []):
        checks = (comp.get("scan") or {}).get("checks") or []
        out[comp["name"]] = {c["name"]: c.get("score") for c in checks}
    return out


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Audit ``spec["target"]`` into ``spec["folder"]``; return its record (see fleet.schema.json)."""
    from amdet_audit import api
    from amdet_audit.audit.policy import load_policy
    from amdet_audit.errors import AmdetError

    started = time.perf_counter()
    record: dict[str, Any] = {"index": spec["index"], "target": spec["target"], "folder": spec["folder_name"],
                              "host": platform.node(), "pid": os.getpid()}
    try:
        entry = spec["entry"]
        sources = api.SourceOptions(component=entry.get("component"), offline=spec.get("offline"),
                                    allow_pickle=spec.get("allow_pickle", False), base=spec.get("base"))
        policy = load_policy(Path(spec["policy"]) if spec.get("policy") else None)
        options = api.ScanOptions(
            reference=entry.get("reference") or spec.get("reference"), reference_free=spec.get("reference_free", False),
            device=spec.get("device", "cpu"), out=Path(spec["folder"]), policy=policy,
            seed=spec.get("seed"), search=spec.get("search", "auto"), checks=spec.get("checks"),
            consumer=entry.get("consumer") or spec.get("consumer"), threads=spec.get("threads"),
            use_cache=spec.get("use_cache", True), third_party_plugins=spec.get("plugins", True),
            argv=["scan", spec["target"]])
        report = api.scan(spec["target"], sources=sources, options=options).to_dict()
        record.update(status="done", exit_code=report["verdict"]["exit_code"], label=report["verdict"]["label"],
                      scores=key_scores(report), digests=sorted({f["sha256"] for f in report["target"]["files"]}),
                      device=report["run"]["device"], cache_hit=bool(report["run"]["cache"]["hit"]), error=None)
    except AmdetError as err:
        record.update(status="error", exit_code=err.exit_code, label="inconclusive", error=str(err))
    except Exception as err:  # a crash in one target is that target's error, never the fleet's
        record.update(status="error", exit_code=2, label="inconclusive", error=f"{type(err).__name__}: {err}"[:2000])
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record
