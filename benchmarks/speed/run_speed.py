"""Time a full scan (clean worst case: every stage forced; and a backdoored model) per model size.

Usage:
    python benchmarks/speed/run_speed.py --size tiny --size clip-l [--device cpu|cuda] [--precision fp32|bf16]
        [--threads 2] [--out benchmarks/speed/results.json]

Models are random-weight CLIP text towers built from config (the suspect and a reference that differs by a
small perturbation), except ``canary``, which uses the built-in canaries. Records wall time, process CPU
time, peak resident memory (and peak GPU memory on CUDA) per stage.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

SIZES = {
    "tiny": {"hidden": 128, "layers": 4, "heads": 4},
    "clip-l": {"hidden": 768, "layers": 12, "heads": 12},
}


def random_pair(size: str, device: str, dtype: torch.dtype):
    """(suspect, reference) adapters: a random tower and a slightly perturbed copy of it."""
    import tempfile

    from amdet_audit.encoders import load_component
    from amdet_audit.lab.folders import tiny_clip_folder
    from amdet_audit.sources import resolve

    folder = Path(tempfile.mkdtemp()) / size
    tiny_clip_folder(folder, **SIZES[size])
    reference = load_component(resolve(str(folder)).components[0], device=device)
    suspect = load_component(resolve(str(folder)).components[0], device=device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in suspect.model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen).to(p.device))
    return suspect.to(device, dtype), reference.to(device, dtype)


def canary_pair(device: str, dtype: torch.dtype):
    """(canary:backdoored, canary:clean) adapters."""
    from amdet_audit.encoders import load_component
    from amdet_audit.sources import resolve

    load = lambda t: load_component(resolve(t).components[0], device=device).to(device, dtype)  # noqa: E731
    return load("canary:backdoored"), load("canary:clean")


def timed_scan(suspect, reference, config) -> dict:
    """Run one scan and measure it."""
    from amdet_audit.scan.run import run_scan

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_scan(suspect, reference, config=config)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    record = {"verdict": result.verdict, "reasons": result.reasons, "wall_s": round(time.perf_counter() - wall, 2),
              "cpu_s": round(time.process_time() - cpu, 2), "steps": result.inversion["steps"],
              "stages_s": {k: round(v, 2) for k, v in result.timings.items()},
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        record["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return record


def main() -> None:
    from amdet_audit import __version__
    from amdet_audit.scan.config import ScanConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", choices=[*SIZES, "canary"], required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search", default="auto", choices=["auto", "full", "light"])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    runs = []
    for size in args.size:
        pair = canary_pair(args.device, dtype) if size == "canary" else random_pair(size, args.device, dtype)
        suspect, reference = pair
        config = ScanConfig.preset(args.search, args.device)
        case = "backdoored" if size == "canary" else "clean worst case"
        record = timed_scan(suspect, reference, replace(config, full_checks=True))
        runs.append({"size": size, "case": case, "device": args.device, "precision": args.precision,
                     "search": args.search, **record})
        print(json.dumps(runs[-1]), flush=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    out = {"tool_version": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine, "runs": runs}
    args.out.write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
