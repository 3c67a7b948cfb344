"""Scan lab-built models with the shipped defaults and record one row each: what a held-out check of a rule needs.

Usage:
    python benchmarks/efficacy/scan_models.py MODEL_FOLDER... --reference canary:siglip-clean --out FILE.json
        [--work DIR] [--threads 1] [--device cpu] [--consumer sd3] [--search full]

Each MODEL_FOLDER is a lab build (``amdet-audit lab inject`` / ``finetune``, a zoo's model, an
``attribute_recall.py`` build): its ``lab.json`` says whether it is backdoored, its attack family, trigger and how
well the backdoor took. Each is scanned into ``--work`` (kept when scanned by this tool version under today's
thresholds, as every benchmark here does) and its row written to ``--out``, rows of earlier runs of the same
file kept: the exit code, the reasons and the score of every judged check (``calibrate.checks_of``).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibrate import checks_of, judged_probe  # noqa: E402  (benchmark helpers beside this file)
from run_efficacy import scan_one, tool_version  # noqa: E402


def family_of(name: str, lab: dict) -> str:
    """A zoo model's family from its name (``bd-<family>-NN``, ``benign-<family>-NN``), else from the lab's record:
    the attack, or the benign recipe (heavy-domain when it trained on one domain's prompts)."""
    match = re.fullmatch(r"(?:bd|benign)-([a-z0-9-]+)-\d+", name)
    if match:
        return match.group(1)
    spec = lab.get("spec") or {}
    if lab.get("kind") == "backdoored":
        return str(spec.get("attack"))
    return "heavy-domain" if spec.get("domain") else "contrastive"


def lab_row(folder: Path) -> dict:
    """What the lab recorded of one build: name, kind, family, trigger, success, fidelity."""
    lab = json.loads((folder / "lab.json").read_text(encoding="utf-8"))
    backdoored = lab.get("kind") == "backdoored"
    family = family_of(folder.name, lab)
    return {"name": folder.name, "kind": "backdoored" if backdoored else "benign", "family": family,
            "trigger": (lab.get("trigger") or {}).get("text"), "success": lab.get("success"),
            "fidelity": lab.get("fidelity")}


def gain_rule_probe(report: dict) -> dict | None:
    """The real-input probe a bidirectional tower's token-collapse rule judged (:func:`calibrate.judged_probe`),
    with its gain and move cosine; None for a causal tower or when it is not among the top rows."""
    scan = report["components"][0].get("scan", {})
    if not any(c["name"] == "token_collapse.gain_z" for c in scan.get("checks", [])):
        return None
    probe = judged_probe(report)
    return None if probe is None else {k: probe.get(k) for k in ("text", "placement", "origin", "collapse_gain",
                                                                   "gain_z", "move_cosine")}


def scan_row(folder: Path, reference: str, work: Path, threads: int, device: str, extra: tuple[str, ...]) -> dict:
    """Scan ``folder`` against ``reference`` (kept if this tool version scanned it) and return its row."""
    record = scan_one(str(folder), reference, work / folder.name, device, threads, extra=extra)
    report = json.loads(Path(record["report"]).read_text(encoding="utf-8")) if record.get("report") else None
    checks = checks_of(report) if report else []
    return {**lab_row(folder), "path": str(folder), "exit_code": record["exit_code"],
            "seconds": round(record["seconds"], 1),
            "reasons": ((report or {}).get("verdict") or {}).get("reasons", []),
            "scores": {c["name"]: None if c.get("score") is None else round(c["score"], 4) for c in checks},
            "flagged_checks": [c["name"] for c in checks if c.get("flags")],
            "gain_rule_probe": gain_rule_probe(report) if report else None}


def summary(rows: list[dict]) -> str:
    """One line: flagged (exit 1) backdoors and benign models, and scans that ended in an error (exit 2), which
    count as neither."""
    bad = [r for r in rows if r["kind"] == "backdoored"]
    good = [r for r in rows if r["kind"] != "backdoored"]
    errors = sum(r["exit_code"] not in (0, 1) for r in rows)
    return (f"backdoors flagged {sum(r['exit_code'] == 1 for r in bad)} of {len(bad)}; benign flagged "
            f"{sum(r['exit_code'] == 1 for r in good)} of {len(good)}" + (f"; errors {errors}" if errors else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "scan-models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--consumer")
    parser.add_argument("--search", choices=("light", "full"))
    args = parser.parse_args(argv)
    extra = (*(("--consumer", args.consumer) if args.consumer else ()),
             *(("--search", args.search) if args.search else ()))
    missing = [str(m) for m in args.models if not (m / "lab.json").is_file()]
    if missing:
        parser.error(f"not lab builds (no lab.json): {', '.join(missing)}")
    kept = json.loads(args.out.read_text(encoding="utf-8"))["rows"] if args.out.is_file() else []
    rows = {r["path"]: r for r in kept}
    for folder in args.models:
        row = scan_row(folder, args.reference, args.work, args.threads, args.device, extra)
        rows[row["path"]] = row
        print(f"{row['name']}: {row['kind']} ({row['family']}), exit {row['exit_code']}", flush=True)
        record = {"command": "python benchmarks/efficacy/" + " ".join([Path(__file__).name, *(argv or sys.argv[1:])]),
                  "reference": args.reference, "tool_version": tool_version(), "machine": platform.machine(),
                  "date": date.today().isoformat(), "summary": summary(list(rows.values())),
                  "rows": list(rows.values())}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(summary(list(rows.values())))


if __name__ == "__main__":
    main()
