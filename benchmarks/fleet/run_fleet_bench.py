"""Fleet throughput: the same 8 canary-sized models scanned sequentially, with ``--jobs 2`` and on a local Ray
runtime with 2 one-CPU workers; models per hour, scaling efficiency against the sequential run, and overhead
per task (fleet wall time beyond the scans' own, per model).

Usage (from the repository root, in the project's virtual environment, nothing else running):
    python benchmarks/fleet/run_fleet_bench.py [--work DIR] [--out benchmarks/fleet/results.json] [--models 8]
        [--modes sequential,jobs-2,ray-2] [--cache DIR] [--targets TARGET...]

The 8 models are benign fine-tunes of canary:clean (``amdet-audit lab finetune``, seeds 1-8; built once into
WORK/models), each scanned against canary:clean with the CPU default search. Every mode starts without cached
scans or reference baselines (``--no-cache``, the baseline store emptied), so each computes its baseline once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "amdet_audit"]
MODES = {"sequential": [], "jobs-2": ["--jobs", "2"], "ray-2": ["--ray", "local", "--scan-cpus", "1"]}


def build_models(work: Path, count: int) -> list[Path]:
    """``count`` benign fine-tunes of canary:clean (built once)."""
    models = []
    for seed in range(1, count + 1):
        folder = work / "models" / f"benign-{seed}"
        if not (folder / "model.safetensors").is_file():
            subprocess.run([*CLI, "lab", "finetune", "canary:clean", "--out", str(folder), "--steps", "40",
                            "--seed", str(seed)], check=True, capture_output=True)
        models.append(folder)
    return models


def run_mode(name: str, extra: list[str], models: list[Path], work: Path, env: dict[str, str]) -> dict:
    """One fleet run of every model; its wall time and the records' scan seconds."""
    out = work / f"fleet-{name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(env["AMDET_AUDIT_CACHE"]) / "baselines", ignore_errors=True)
    started = time.perf_counter()
    code = subprocess.run([*CLI, "fleet", *map(str, models), "--reference", "canary:clean", "--out", str(out),
                           "--no-cache", "--no-plugins", *extra], env=env, capture_output=True, text=True).returncode
    wall = time.perf_counter() - started
    records = json.loads((out / "fleet.json").read_text())["targets"]
    scans = sum(r["seconds"] for r in records)
    return {"mode": name, "exit_code": code, "wall_s": round(wall, 1), "scan_s_sum": round(scans, 1),
            "models": len(records), "models_per_hour": round(len(records) / wall * 3600, 1),
            "overhead_per_task_s": round((wall - scans / max(1, parallel(name))) / len(records), 2),
            "labels": sorted({r.get("label", r["status"]) for r in records})}


def parallel(mode: str) -> int:
    """Scans at a time in a mode."""
    return 1 if mode == "sequential" else 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), type=lambda s: s.split(","))
    parser.add_argument("--cache", type=Path, default=None, help="amdet-audit cache (default: WORK/cache)")
    parser.add_argument("--targets", nargs="*", default=None, help="scan these instead of building the models")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.work / "cache"
    env = {**os.environ, "AMDET_AUDIT_CACHE": str(cache), "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ["AMDET_AUDIT_CACHE"] = env["AMDET_AUDIT_CACHE"]
    models = args.targets or build_models(args.work, args.models)
    runs = [run_mode(name, MODES[name], models, args.work, env) for name in args.modes]
    base = runs[0]["wall_s"]
    for run in runs:
        run["speedup"] = round(base / run["wall_s"], 2)
        run["scaling_efficiency"] = round(base / run["wall_s"] / parallel(run["mode"]), 2)
        print(json.dumps(run), flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
              "command": " ".join(["python", "benchmarks/fleet/run_fleet_bench.py",
                                   *(argv if argv is not None else sys.argv[1:])]), "runs": runs}
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
