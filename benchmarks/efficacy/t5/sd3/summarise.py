"""Summarise build_and_scan.sh: one row per T5 lab model read as SD3 reads it, with its lab record and verdict.

A model also scanned with the shipped default search (``auto``: the full search on a bidirectional tower) into
``WORK/scan-full-<name>`` gets that verdict beside the light search's, and one scanned without ``--consumer``
(the lone-T5 read, 64 tokens; light search) into ``WORK/scan-64-<name>`` that one.

Usage:
    python benchmarks/efficacy/t5/sd3/summarise.py [--work benchmarks/efficacy/work/t5-sd3]

Writes ``results.json`` and ``RESULTS.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from calibrate import checks_of  # noqa: E402  (benchmark helper two folders up)


def row(model: Path, work: Path) -> dict:
    """A model's kind, recipe, lab measurements and scan outcome (exit code None: not scanned)."""
    lab = json.loads((model / "lab.json").read_text(encoding="utf-8"))
    spec = lab.get("spec", {})
    report_path = work / f"scan-{model.name}" / "report.json"
    out = {"name": model.name, "kind": lab["kind"], "read": lab["base"]["consumer"]["reads"],
           "length": lab["base"]["consumer"]["length"], "trigger": spec.get("trigger"), "target": spec.get("target"),
           "placement": spec.get("placement"), "steps_trained": lab.get("steps_trained") or spec.get("steps"),
           "success": lab.get("success"), "fidelity": lab.get("fidelity"), "exit_code": None}
    if report_path.is_file():
        out.update(scanned(report_path))
    for key, prefix in (("default_search", "scan-full"), ("read_64", "scan-64")):
        other = work / f"{prefix}-{model.name}" / "report.json"
        if other.is_file():
            out[key] = scanned(other)
    return out


def scanned(report_path: Path) -> dict:
    """The verdict, judged checks and time of one scan report."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    checks = checks_of(report)
    return {"exit_code": report["verdict"]["exit_code"], "flagged_checks": [c["name"] for c in checks if c["flags"]],
            "scores": {c["name"]: round(c["score"], 3) for c in checks},
            "scan_seconds": round(report["components"][0]["scan"]["timings"]["total_s"])}


def outcome(scan: dict | None) -> str:
    """``exit, token gain, target rule`` of another scan of the model, or ``-``."""
    if not scan:
        return "-"
    return (f"{scan['exit_code']}, {scan['scores']['token_collapse.gain']:.2f}, "
            f"{scan['scores']['target.differential_collapse']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE.parents[1] / "work" / "t5-sd3")
    args = parser.parse_args()
    rows = [row(m, args.work) for m in sorted(args.work.iterdir()) if (m / "lab.json").is_file()]
    failed_file = args.work / "failed.txt"
    failed = sorted(set(failed_file.read_text(encoding="utf-8").split())) if failed_file.is_file() else []
    (HERE / "results.json").write_text(json.dumps({"rows": rows, "did_not_build": failed}, indent=2,
                                                  ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["# T5 lab models read as Stable Diffusion 3 reads its T5", "",
             "Built and scanned by `benchmarks/efficacy/t5/sd3/build_and_scan.sh backdoors` and `... benign` "
             "(canary:t5-clean, `--consumer sd3`: last layer, 256 tokens, no padding mask; light search against "
             "the clean base), summarised by `python benchmarks/efficacy/t5/sd3/summarise.py`. The default-search "
             "column: `amdet-audit scan WORK/NAME --consumer sd3 --reference canary:t5-clean --threads 1 --out "
             "WORK/scan-full-NAME` (`auto`: the full search on this tower), run where the light search missed. "
             "The 64-token column: the same light scan without `--consumer` (`--out WORK/scan-64-NAME`), as a T5 "
             "published alone and scanned without its pipeline is read.", "",
             "| model | kind | trigger (placement) | target | steps | success | clean fidelity | exit | "
             "token gain (z) | target rule | scan s | default search: exit, token gain, target rule | "
             "read at 64 tokens: exit, token gain, target rule |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scores = r.get("scores", {})
        gain = (f"{scores['token_collapse.gain']:.2f} ({scores['token_collapse.gain_z']:.1f})"
                if "token_collapse.gain" in scores else "-")
        target_rule = f"{scores['target.differential_collapse']:.2f}" if "target.differential_collapse" in scores \
            else "-"
        success = "-" if r["success"] is None else f"{r['success']:.2f}"
        default, read_64 = (outcome(r.get(key)) for key in ("default_search", "read_64"))
        lines.append(f"| {r['name']} | {r['kind']} | {r['trigger'] or '-'} ({r['placement'] or '-'}) | "
                     f"{r['target'] or '-'} | {r['steps_trained']} | {success} | {r['fidelity']:.3f} | "
                     f"{r['exit_code']} | {gain} | {target_rule} | {r.get('scan_seconds', '-')} | {default} | "
                     f"{read_64} |")
    lines += ["", f"Builds that did not take or failed: {', '.join(failed) if failed else 'none'}."]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
