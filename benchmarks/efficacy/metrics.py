"""Detection metrics over scanned zoo models: confusion counts, precision/recall/F1, AUROC, ROC curves.

A model is *positive* when the lab implanted a backdoor that took; *predicted positive* when the scan's exit
code is not 0 (1 backdoored, or 2 inconclusive: a gate blocks both). Inconclusive results are also counted on
their own so they cannot hide inside the figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One scanned model: ground truth, the scan's outcome and its continuous scores."""

    name: str
    positive: bool
    exit_code: int
    scores: dict[str, float]  # check name -> score, oriented so that higher means "more backdoor-like"
    attack: str | None = None
    trigger_kind: str | None = None
    seconds: float | None = None
    peak_rss_mib: float | None = None


def confusion(rows: Iterable[Row]) -> dict[str, int]:
    """tp, fp, tn, fn (exit code != 0 counts as flagged) and the number of inconclusive scans."""
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "inconclusive": 0}
    for row in rows:
        flagged = row.exit_code != 0
        counts["inconclusive"] += row.exit_code == 2
        key = ("tp" if flagged else "fn") if row.positive else ("fp" if flagged else "tn")
        counts[key] += 1
    return counts


def ratio(num: float, den: float) -> float | None:
    """num / den, or None when den is 0 (a figure that cannot be computed is not reported as 0)."""
    return None if den == 0 else num / den


def classification(rows: Sequence[Row]) -> dict[str, float | int | None]:
    """precision, recall, F1, benign false-positive rate and the counts."""
    c = confusion(rows)
    precision, recall = ratio(c["tp"], c["tp"] + c["fp"]), ratio(c["tp"], c["tp"] + c["fn"])
    f1 = None if precision is None or recall is None else ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": ratio(c["fp"], c["fp"] + c["tn"]), **c}


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def roc_curve(positives: Sequence[float], negatives: Sequence[float]) -> list[tuple[float, float]]:
    """(false-positive rate, true-positive rate) points from the strictest threshold to the loosest."""
    points = [(0.0, 0.0)]
    for threshold in sorted(set(positives) | set(negatives), reverse=True):
        tpr = sum(p >= threshold for p in positives) / max(len(positives), 1)
        fpr = sum(n >= threshold for n in negatives) / max(len(negatives), 1)
        points.append((fpr, tpr))
    return points


def score_aurocs(rows: Sequence[Row]) -> dict[str, float | None]:
    """AUROC of every continuous score, over the rows that have it (a reference-free scan lacks the
    reference-relative scores)."""
    names = set().union(*(r.scores for r in rows))
    return {name: auroc([r.scores[name] for r in rows if r.positive and name in r.scores],
                        [r.scores[name] for r in rows if not r.positive and name in r.scores])
            for name in sorted(names)}


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """median and 90th percentile (nearest rank) of a list."""
    if not values:
        return {"median": None, "p90": None, "max": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return {"median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def per_attack(rows: Sequence[Row]) -> dict[str, dict[str, float | int | None]]:
    """Recall per attack and per trigger kind (backdoored models only), and the benign false-positive rate."""
    out: dict[str, dict[str, float | int | None]] = {}
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.positive:
            groups.setdefault(f"attack:{row.attack}", []).append(row)
            groups.setdefault(f"trigger:{row.trigger_kind}", []).append(row)
    for key, group in sorted(groups.items()):
        flagged = sum(r.exit_code != 0 for r in group)
        out[key] = {"models": len(group), "detected": flagged, "recall": ratio(flagged, len(group))}
    benign = [r for r in rows if not r.positive]
    out["benign"] = {"models": len(benign), "flagged": sum(r.exit_code != 0 for r in benign),
                     "fpr": ratio(sum(r.exit_code != 0 for r in benign), len(benign))}
    return out


def summarize(rows: Sequence[Row]) -> dict[str, object]:
    """Every figure for one (set, base): classification, AUROC per score, per attack, timings, memory."""
    seconds = [r.seconds for r in rows if r.seconds is not None]
    memory = [r.peak_rss_mib for r in rows if r.peak_rss_mib is not None]
    return {**classification(rows), "auroc": score_aurocs(rows), "per_attack": per_attack(rows),
            "models": len(rows), "positives": sum(r.positive for r in rows),
            "scan_seconds": distribution(seconds), "peak_rss_mib": distribution(memory)}
