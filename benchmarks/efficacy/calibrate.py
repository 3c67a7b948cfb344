"""Choose the scan's three main thresholds on the calibration set only, from the scores the scans recorded.

Usage:
    python benchmarks/efficacy/calibrate.py [--work benchmarks/efficacy/work] [--base canary] [--max-fpr 0.02]

Re-applies the scan's two rules to every calibration report with candidate values of
``target.collapse_excess``, ``divergence.relative`` and ``divergence.anchor_similarity`` (the other thresholds
stay as the reports recorded them): a rule holds when all its checks pass. Picks the values with the best F1
among those whose benign false-positive rate is at most ``--max-fpr`` (the middle of the best plateau, for
margin); prints them with the figures. The held-out set is never read.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOBS = {"target.collapse_excess": [round(0.10 + 0.01 * i, 2) for i in range(41)],
         "divergence.relative": [round(1.5 + 0.25 * i, 2) for i in range(23)],
         "divergence.anchor_similarity": [round(0.1 + 0.05 * i, 2) for i in range(11)]}


def load_rows(work: Path, base: str) -> list[tuple[bool, int, list[dict]]]:
    """(positive, scanned exit code, checks) per calibration model of ``base`` that has a report."""
    root = work / "calibration" / base
    manifest = json.loads((root / "zoo" / "zoo.json").read_text(encoding="utf-8"))
    truth = {m["name"]: m["kind"] == "backdoored" for m in manifest["models"] if m["status"] == "built"}
    truth["clean-base"] = False
    rows = []
    for name, positive in sorted(truth.items()):
        record_path = root / "scans" / name / "record.json"
        if not record_path.is_file():
            continue
        record = json.loads(record_path.read_text(encoding="utf-8"))
        checks = []
        if record["report"]:
            report = json.loads(Path(record["report"]).read_text(encoding="utf-8"))
            checks = report["components"][0].get("scan", {}).get("checks", [])
        rows.append((positive, record["exit_code"], checks))
    return rows


def passes(check: dict, thresholds: dict[str, float]) -> bool:
    """Whether one check flags under ``thresholds`` (its recorded threshold unless overridden)."""
    threshold = thresholds.get(check["name"], check["threshold"])
    if check["score"] is None:
        return False
    return check["score"] >= threshold if check["direction"] == ">=" else check["score"] <= threshold


def flagged(exit_code: int, checks: list[dict], thresholds: dict[str, float]) -> bool:
    """The verdict under ``thresholds``: a rule holds when all its checks flag; errors stay flagged."""
    if exit_code == 2 or not checks:
        return exit_code != 0
    rules: dict[str, list[bool]] = {}
    for check in checks:
        rules.setdefault(check["name"].split(".")[0], []).append(passes(check, thresholds))
    return any(all(flags) for flags in rules.values())


def figures(rows, thresholds: dict[str, float]) -> dict[str, float]:
    """F1 and benign FPR of the rows under ``thresholds``."""
    tp = sum(p and flagged(c, ch, thresholds) for p, c, ch in rows)
    fp = sum(not p and flagged(c, ch, thresholds) for p, c, ch in rows)
    positives, negatives = sum(p for p, _, _ in rows), sum(not p for p, _, _ in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "fpr": fp / negatives if negatives else 0.0}


def default_thresholds() -> dict[str, float]:
    """Today's default thresholds, by the check name they apply to."""
    from dataclasses import asdict

    from run_efficacy import CHECK_OF_THRESHOLD

    from amdet_audit.policy import load_thresholds

    return {CHECK_OF_THRESHOLD[k]: v for k, v in asdict(load_thresholds()).items()}


def suggest(rows, max_fpr: float) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """The chosen thresholds, their calibration figures, and each knob's range on the best plateau.

    The current default thresholds (policies/default.yaml) are kept when they are on the best plateau already.
    """
    names = list(KNOBS)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*KNOBS.values())]
    scored = [(combo, figures(rows, combo)) for combo in combos]
    allowed = [s for s in scored if s[1]["fpr"] <= max_fpr] or sorted(scored, key=lambda s: s[1]["fpr"])[:1]
    best = max(s[1]["f1"] for s in allowed)
    plateau = [s for s in allowed if s[1]["f1"] == best]
    ranges = {k: [min(t[k] for t, _ in plateau), max(t[k] for t, _ in plateau)] for k in names}
    current = figures(rows, default_thresholds())
    if current["f1"] >= best and current["fpr"] <= max_fpr:
        return {}, current, ranges
    middle = {k: sorted(t[k] for t, _ in plateau)[len(plateau) // 2] for k in names}
    choice = min(plateau, key=lambda s: sum(abs(s[0][k] - middle[k]) / (KNOBS[k][1] - KNOBS[k][0]) for k in names))
    return choice[0], choice[1], ranges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--base", default="canary")
    parser.add_argument("--max-fpr", type=float, default=0.02)
    args = parser.parse_args(argv)
    rows = load_rows(args.work, args.base)
    thresholds, figs, ranges = suggest(rows, args.max_fpr)
    print(json.dumps({"models": len(rows), "as_scanned": figures(rows, {}),
                      "with_current_defaults": figures(rows, default_thresholds()),
                      "suggested": thresholds or "keep the current defaults (on the best plateau)",
                      "with_suggested": figs, "best_plateau_ranges": ranges}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
