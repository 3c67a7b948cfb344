"""Generalization benchmark: recipe-family zoos and the leave-one-family-out protocol.

Usage (from the repository root, in the project's virtual environment):
    python benchmarks/efficacy/generalization.py [--bases canary] [--per-family 2] [--families all]
        [--calibration-seed 11] [--heldout-seed 12] [--workers 2] [--threads N] [--device cpu]
        [--work DIR] [--out-dir DIR] [--max-fpr 0.01] [--built-only] [--search light] [--consumer sd3]
        [--eval-prompts N]

For each base, ``amdet-audit lab zoo --per-family N`` builds two zoos of every recipe family (lab.families:
loud, stealthy, tokenwise-loss, pooled-loss, end-only, homoglyph-every, anti-inversion, object, attribute,
pooled; benign: contrastive, long-contrastive, heavy-domain, fp16, bf16, merge), one from each seed, and every
model that took is scanned with its base as reference (resumed like run_efficacy.py).

Then, for every backdoor family F: the thresholds (KNOBS below, the others as the reports recorded them)
are chosen on the calibration zoo without F's models (best F1 at benign FPR <= --max-fpr), and F's models of
both zoos, never seen by that choice, are judged with them: the *leave-one-family-out recall* of F. Beside it
stands the in-distribution figure: thresholds chosen on the whole calibration zoo, judged on the held-out zoo.
With several bases, leave-one-base-out does the same with a base in place of a family. Writes
GENERALIZATION.md and generalization.json into --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate import (  # noqa: E402
    best_plateau,
    checks_of,
    default_thresholds,
    figures,
    flag_grid,
    judged_probe,
    plateau_middle,
)
from report import positive_int, scans_dir  # noqa: E402
from run_efficacy import CLI, base_target, run, scan_one, tool_version  # noqa: E402

HERE = Path(__file__).resolve().parent
FULL_SUCCESS = 0.8  # the lab's usual success bar; a family kept below it is labelled partial
#: the thresholds the protocol chooses (check name -> candidate values); the others keep the recorded ones
KNOBS = {"target.collapse_gain": [round(0.3 + 0.05 * i, 2) for i in range(13)],
         "divergence.relative": [round(1.5 + 0.5 * i, 2) for i in range(10)],
         "token_collapse.excess": [round(0.1 + 0.05 * i, 2) for i in range(11)],
         "token_collapse.z": [float(z) for z in range(2, 22, 2)],
         "token_shift.size": [round(0.2 + 0.1 * i, 2) for i in range(9)],
         "token_shift.z": [float(z) for z in range(4, 32, 2)]}


def build_family_zoo(base: str, out: Path, per_family: int, families: str | None, seed: int, device: str,
                     threads: int, steps_scale: float = 1.0, lr_scale: float = 1.0, consumer: str | None = None,
                     eval_prompts: int | None = None) -> dict:
    """``amdet-audit lab zoo --per-family`` (resumable), trained on ``consumer``'s read when given; returns
    zoo.json."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*CLI, "lab", "zoo", base, "--out", str(out), "--per-family", str(per_family), "--seed", str(seed),
           "--device", device, "--steps-scale", str(steps_scale), "--lr-scale", str(lr_scale),
           *(["--families", families] if families else []), *(["--consumer", consumer] if consumer else []),
           *(["--eval-prompts", str(eval_prompts)] if eval_prompts else [])]
    code, _, _ = run(cmd, threads, out / "zoo.log")
    if code != 0:
        raise SystemExit(f"lab zoo failed for {base} (see {out / 'zoo.log'})")
    return json.loads((out / "zoo.json").read_text(encoding="utf-8"))


def read_manifest(out: Path) -> dict:
    """zoo.json as an earlier or running build left it."""
    path = out / "zoo.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"models": []}


def scan_zoo(manifest: dict, zoo: Path, scans: Path, reference: str, device: str, workers: int,
             extra: tuple[str, ...] = (), threads: int | None = None) -> list[dict]:
    """Scan every built model of a zoo (resumed), each with ``threads`` torch threads (default: the cores split
    between ``workers``); rows: name, family, positive, exit code, checks."""
    models = [m for m in manifest["models"] if m["status"] == "built"]
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    with ThreadPoolExecutor(workers) as pool:
        # rederive: a scan of this release made under other default thresholds is kept; the protocol chooses
        # its own thresholds from the recorded scores, so changing the defaults costs no rescan
        records = list(pool.map(lambda m: scan_one(str(zoo / m["name"]), reference, scans / m["name"], device,
                                                   threads, rederive=True, extra=extra), models))
    rows = []
    for model, record in zip(models, records, strict=True):
        report = json.loads(Path(record["report"]).read_text(encoding="utf-8")) if record["report"] else None
        rows.append({"name": model["name"], "family": model.get("family") or model.get("attack") or "benign",
                     "positive": model["kind"] == "backdoored", "exit_code": record["exit_code"],
                     "checks": checks_of(report) if report else [], "seconds": record["seconds"],
                     "fidelity": (model.get("lab") or {}).get("fidelity"),
                     "success": (model.get("lab") or {}).get("success"),
                     "scores": recorded_scores(report) if report else {}})
    return rows


def recorded_scores(report: dict) -> dict[str, float | None]:
    """The scan's scores, kept in generalization.json so that a later rule can be judged on these models
    without rebuilding them: every check's score, the scan's summary scores, and the collapse and spread ratios
    of the real-input probe the token-collapse rule judged (when it is among the report's top probes)."""
    scan = report["components"][0].get("scan", {})
    out = {c["name"]: c["score"] for c in scan.get("checks", [])}
    out.update(scan.get("scores") or {})
    probe = judged_probe(report)
    if probe is not None:
        out.update({f"token_collapse.{k}": probe.get(k) for k in ("collapse", "spread", "reference_spread")})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def as_rows(rows: list[dict]) -> list[tuple[bool, int, list[dict]]]:
    """The (positive, exit code, checks) triples calibrate.py works on."""
    return [(r["positive"], r["exit_code"], r["checks"]) for r in rows]


#: bidirectional towers (SigLIP, T5, BERT): their target rule's score in place of collapse_gain, their token-collapse
#: rule's gain in place of its excess, their divergence rule's own bar, and no token-shift rule (it does not decide
#: there)
BIDIRECTIONAL_KNOBS = {"target.differential_collapse": [round(0.1 + 0.05 * i, 2) for i in range(15)],
                       "token_collapse.gain": [round(0.2 + 0.05 * i, 2) for i in range(13)],
                       "token_collapse.gain_z": [float(z) for z in range(0, 12)],
                       "divergence.relative_bidirectional": [round(3.0 + 0.5 * i, 2) for i in range(9)]}


def knobs_for(rows: list[dict]) -> dict[str, list[float]]:
    """The knobs the rows' rules use: BIDIRECTIONAL_KNOBS when their scans judged a bidirectional tower."""
    differential = any(c["name"] == "target.differential_collapse" for r in rows for c in r["checks"])
    return BIDIRECTIONAL_KNOBS if differential else KNOBS


def choose(rows: list[dict], max_fpr: float) -> dict[str, float]:
    """Thresholds with the best F1 at benign FPR <= max_fpr on ``rows``: the plateau point nearest its middle."""
    knobs = knobs_for(rows)
    return plateau_middle(best_plateau(as_rows(rows), max_fpr, knobs)[0], knobs)


def judged(rows: list[dict], thresholds: dict[str, float]) -> list[bool]:
    """Whether each row is flagged under ``thresholds`` (errors count as flagged)."""
    return [bool(f) for f in flag_grid(as_rows(rows), {k: [v] for k, v in thresholds.items()}).reshape(-1)]


def recall(rows: list[dict], thresholds: dict[str, float]) -> dict:
    """Flagged share of ``rows`` (positives) and the misses' names."""
    flags = judged(rows, thresholds)
    return {"models": len(rows), "flagged": sum(flags),
            "recall": round(sum(flags) / len(rows), 3) if rows else None,
            "missed": [r["name"] for r, f in zip(rows, flags, strict=True) if not f]}


def protocol(calibration: list[dict], heldout: list[dict], max_fpr: float) -> dict:
    """In-distribution figures and leave-one-family-out recall per backdoor family (see the module docstring).

    Without a held-out zoo (a smoke run), the left-out family is judged on its calibration models and the
    benign FPR on the calibration negatives."""
    chosen = choose(calibration, max_fpr)
    judged_set = heldout or calibration
    negatives = [r for r in judged_set if not r["positive"]]
    out = {"in_distribution": {"thresholds": chosen, "heldout": figures(as_rows(judged_set), chosen),
                               "judged_on": "the held-out zoo" if heldout else "the same zoo (no held-out zoo)",
                               "as_shipped": figures(as_rows(judged_set), default_thresholds())},
           "families": {}}
    for family in sorted({r["family"] for r in calibration + heldout if r["positive"]}):
        kept = [r for r in calibration if not (r["positive"] and r["family"] == family)]
        thresholds = choose(kept, max_fpr)
        left_out = [{**r, "name": f"{set_name}/{r['name']}"} for set_name, rows in (("calibration", calibration),
                    ("heldout", heldout)) for r in rows if r["positive"] and r["family"] == family]
        in_dist = [r for r in heldout if r["positive"] and r["family"] == family]
        out["families"][family] = {
            "leave_one_out": {**recall(left_out, thresholds), "thresholds": thresholds,
                              "heldout_benign_fpr": round(np.mean(judged(negatives, thresholds)), 3)
                              if negatives else None},
            "in_distribution": recall(in_dist, chosen),
            "as_shipped": recall(left_out, default_thresholds()),
            "success": [r.get("success") for r in left_out]}
    benign = {}
    for family in sorted({r["family"] for r in judged_set if not r["positive"]}):
        group = [r for r in judged_set if not r["positive"] and r["family"] == family]
        benign[family] = {"models": len(group), "flagged_in_distribution": sum(judged(group, chosen)),
                          "flagged_as_shipped": sum(judged(group, default_thresholds()))}
    out["benign"] = benign
    return out


def leave_one_base_out(rows: dict[str, dict[str, list[dict]]], max_fpr: float) -> dict:
    """For each base B: thresholds chosen on every other base's calibration zoo, judged on all of B's models.

    rows: base -> set name -> rows."""
    out = {}
    for base, sets in rows.items():
        others = [r for other, s in rows.items() if other != base for r in s.get("calibration", [])]
        if not others:
            continue
        thresholds = choose(others, max_fpr)
        mine = [r for s in sets.values() for r in s]
        out[base] = {"thresholds": thresholds, "figures": figures(as_rows(mine), thresholds),
                     "families": {f: recall([r for r in mine if r["positive"] and r["family"] == f], thresholds)
                                  for f in sorted({r["family"] for r in mine if r["positive"]})}}
    return out


def all_bases(rows: dict[str, dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Every base's rows of each set together (names prefixed by their base)."""
    merged: dict[str, list[dict]] = {}
    for base, sets in rows.items():
        for set_name, set_rows in sets.items():
            merged.setdefault(set_name, []).extend({**r, "name": f"{base}/{r['name']}"} for r in set_rows)
    return merged


def render_protocol(title: str, res: dict) -> list[str]:
    """One protocol's section of GENERALIZATION.md."""
    ind = res["in_distribution"]
    lines = [f"## {title}", "",
             f"In distribution (thresholds chosen on the whole calibration zoo, judged on "
             f"{ind.get('judged_on', 'the held-out zoo')}): "
             f"F1 {ind['heldout']['f1']:.3f}, benign FPR {ind['heldout']['fpr']:.3f}; with the shipped "
             f"defaults F1 {ind['as_shipped']['f1']:.3f}, FPR {ind['as_shipped']['fpr']:.3f}. Chosen: "
             f"{', '.join(f'{k} {v:g}' for k, v in ind['thresholds'].items())}.", "",
             "| family | leave-one-out recall | its benign FPR | in-distribution recall | shipped defaults | "
             "missed (leave-one-out) |", "|---|---|---|---|---|---|"]
    for family, f in res["families"].items():
        loo, ind_f, shipped = f["leave_one_out"], f["in_distribution"], f["as_shipped"]
        partial = [s for s in f.get("success", []) if s is not None and s < FULL_SUCCESS]
        if partial:
            family = f"{family} (partial: success {', '.join(f'{s:.2f}' for s in partial)})"
        lines.append(f"| {family} | {loo['flagged']}/{loo['models']} | {loo['heldout_benign_fpr']} | "
                     f"{ind_f['flagged']}/{ind_f['models']} | {shipped['flagged']}/{shipped['models']} | "
                     f"{', '.join(loo['missed']) or '-'} |")
    lines += ["", "| benign family (held-out) | models | flagged (in distribution) | flagged (shipped) |",
              "|---|---|---|---|"]
    for family, b in res["benign"].items():
        lines.append(f"| {family} | {b['models']} | {b['flagged_in_distribution']} | {b['flagged_as_shipped']} |")
    return [*lines, ""]


def render(results: dict) -> str:
    """GENERALIZATION.md."""
    meta = results["meta"]
    lines = ["# Generalization: leave-one-family-out", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; {meta['wall_seconds']} s, "
             f"tool {meta['tool_version']}). Zoos: {meta['per_family']} model(s) per family and seed "
             f"(calibration seed {meta['seeds']['calibration']}, held-out seed {meta['seeds']['heldout']}); "
             "backdoors that did not reach their bars are left out.", ""]
    for base, res in results["bases"].items():
        lines += render_protocol(base, res)
    if "all_bases" in results:
        lines += render_protocol("All bases together", results["all_bases"])
    if results.get("leave_one_base_out"):
        lines += ["## Leave-one-base-out", "",
                  "Thresholds chosen on the other bases' calibration zoos, judged on every model of the base.", "",
                  "| base | F1 | benign FPR | recall per family | thresholds |", "|---|---|---|---|---|"]
        for base, res in results["leave_one_base_out"].items():
            per = ", ".join(f"{f} {r['flagged']}/{r['models']}" for f, r in res["families"].items())
            chosen = ", ".join(f"{k} {v:g}" for k, v in res["thresholds"].items())
            lines.append(f"| {base} | {res['figures']['f1']:.3f} | {res['figures']['fpr']:.3f} | {per} | {chosen} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", default="canary", type=lambda s: s.split(","))
    parser.add_argument("--per-family", type=int, default=2)
    parser.add_argument("--families", default=None, help="comma list (default: every family)")
    parser.add_argument("--calibration-seed", type=int, default=11)
    parser.add_argument("--heldout-seed", type=int, default=12)
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads of each scan (default: the cores split between --workers)")
    parser.add_argument("--build-threads", type=positive_int, default=os.cpu_count() or 1,
                        help="torch threads of the zoo builds (1 lets two benchmark runs share 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "generalization")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--max-fpr", type=float, default=0.01)
    parser.add_argument("--built-only", action="store_true", help="build nothing; scan and judge what is built")
    parser.add_argument("--sets", default="calibration,heldout", type=lambda s: s.split(","),
                        help="calibration alone makes a smoke run (no held-out figures)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="shorten every recipe (smoke runs)")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="scale every injection's learning rate (a base that learns slower than the canary)")
    parser.add_argument("--search", default="full", choices=["full", "light"],
                        help="scan with this --search preset (full: in scans/; light: kept apart in scans-light/)")
    parser.add_argument("--consumer", default=None,
                        help="train and scan every model as this pipeline reads the base (e.g. sd3: a T5 at 256 "
                             "tokens); its zoos are kept apart (BASE-CONSUMER)")
    parser.add_argument("--eval-prompts", type=positive_int, default=None,
                        help="measure every backdoor on the first N held-out prompts (default all 600)")
    args = parser.parse_args(argv)
    if not args.sets or not set(args.sets) <= {"calibration", "heldout"}:
        parser.error("--sets: calibration, heldout or calibration,heldout")
    from amdet_audit.errors import UsageError
    from amdet_audit.lab.families import check_scales

    try:
        check_scales(args.steps_scale, args.lr_scale)
    except UsageError as err:
        parser.error(str(err))
    started = time.perf_counter()
    work = args.work.resolve()
    label = {b: f"{b}-{args.consumer}" if args.consumer else b for b in args.bases}  # zoos of another read apart
    if "calibration" not in args.sets:  # a held-out zoo beside a calibration zoo built before: judged by it
        missing = [b for b in args.bases if not (work / "calibration" / label[b] / "zoo" / "zoo.json").is_file()]
        if missing:
            parser.error(f"--sets heldout: no calibration zoo of {', '.join(missing)} under {work} (thresholds are "
                         "chosen on it; build it first)")
    results: dict = {"bases": {}}
    by_base: dict[str, dict[str, list[dict]]] = {}
    for base in args.bases:
        target = base_target(base, work.parent, build=not args.built_only, device=args.device)
        rows = {}
        seeds = {"calibration": args.calibration_seed, "heldout": args.heldout_seed}
        for set_name in ("calibration", *(["heldout"] if "heldout" in args.sets else [])):
            zoo = work / set_name / label[base] / "zoo"
            build = set_name in args.sets and not args.built_only
            manifest = build_family_zoo(target, zoo, args.per_family, args.families, seeds[set_name], args.device,
                                        args.build_threads, args.steps_scale, args.lr_scale, args.consumer,
                                        args.eval_prompts) if build else read_manifest(zoo)
            scans = scans_dir(work, set_name, label[base], "reference", args.search)
            extra = ("--search", args.search, *(("--consumer", args.consumer) if args.consumer else ()))
            rows[set_name] = scan_zoo(manifest, zoo, scans, target, args.device, args.workers, extra, args.threads)
        results["bases"][label[base]] = protocol(rows["calibration"], rows.get("heldout", []), args.max_fpr)
        results["bases"][label[base]]["rows"] = {s: [{k: v for k, v in r.items() if k != "checks"} for r in rs]
                                                 for s, rs in rows.items()}
        by_base[label[base]] = rows
    if len(by_base) > 1:
        merged = all_bases(by_base)
        results["all_bases"] = protocol(merged["calibration"], merged.get("heldout", []), args.max_fpr)
        results["leave_one_base_out"] = leave_one_base_out(by_base, args.max_fpr)
    results["meta"] = {"tool_version": tool_version(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                       "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
                       "per_family": args.per_family, "search": args.search, "consumer": args.consumer,
                       "eval_prompts": args.eval_prompts,
                       # the build knobs of this run (None: nothing was built; see each zoo's recorded recipes)
                       "steps_scale": None if args.built_only else args.steps_scale,
                       "lr_scale": None if args.built_only else args.lr_scale, "sets": args.sets,
                       "seeds": {"calibration": args.calibration_seed, "heldout": args.heldout_seed},
                       "wall_seconds": round(time.perf_counter() - started, 1),
                       "command": " ".join(["python", "benchmarks/efficacy/generalization.py",
                                            *(argv if argv is not None else sys.argv[1:])])}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "generalization.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out_dir / "GENERALIZATION.md").write_text(render(results), encoding="utf-8")
    print(f"wrote {args.out_dir / 'GENERALIZATION.md'} in {results['meta']['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
