"""Choose the scan's four main thresholds on the calibration set only, from the scores the scans recorded.

Usage:
    python benchmarks/efficacy/calibrate.py [--work benchmarks/efficacy/work] [--bases canary,clip-256]
        [--max-fpr 0.02] [--reference-free]

Re-applies the scan's two rules to every calibration report of the given bases (pooled: one set of defaults
serves every base) with candidate values of ``target.collapse_gain``, ``target.same_target_rate``,
``divergence.relative`` and ``divergence.anchor_similarity`` (the other thresholds stay as the reports
recorded them): a rule holds when all its checks pass. Picks the values with the best F1 among those whose
benign false-positive rate is at most ``--max-fpr`` (the middle of the best plateau, for margin); prints them
with the figures, also per base. The held-out set is never read.

``--reference-free`` does the same over the reference-free scans (``run_efficacy.py --reference-free``) for the
one threshold of that mode alone, ``target.collapse`` (policy key ``reference_free_collapse``); the other check
of its rule, ``target.same_target_rate``, is shared with the reference mode and calibrated there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KNOBS = {"target.collapse_gain": [round(0.10 + 0.02 * i, 2) for i in range(41)],
         "target.same_target_rate": [round(0.70 + 0.02 * i, 2) for i in range(15)],
         "divergence.relative": [round(1.5 + 0.25 * i, 2) for i in range(23)],
         "divergence.anchor_similarity": [round(0.1 + 0.05 * i, 2) for i in range(11)]}
KNOBS_REFERENCE_FREE = {"target.collapse": [round(0.50 + 0.01 * i, 2) for i in range(51)]}


def checks_of(report: dict) -> list[dict]:
    """The scan checks of a report's first component.

    Reports of earlier releases recorded ``target.collapse_excess`` (suspect minus reference collapse); it is
    turned into today's ``target.collapse_gain`` from the same report's collapse scores, with the recorded
    threshold converted alike, so that old scans are judged exactly as a rescan would judge them. Likewise a
    bidirectional tower's divergence checks, reported but not judged by earlier releases, are judged as this
    release judges them (``divergence.relative`` becomes ``divergence.relative_bidirectional`` at today's
    ``bidirectional_divergence`` bar). Its token-shift checks are left out: that rule does not decide there
    (scan/verdict.py, BIDIRECTIONAL_RULES), and so is any check no threshold of this release applies to.
    """
    from amdet_audit.scan.features import collapse_gain

    component = report["components"][0]
    scan = component.get("scan", {})
    bidirectional = (component.get("encoder") or {}).get("causal") is False
    checks = []
    for check in scan.get("checks", []):
        if bidirectional and check["name"].startswith("token_shift."):
            continue
        if bidirectional and check["name"] == "divergence.relative":  # an earlier release's unjudged check
            threshold = default_thresholds()["divergence.relative_bidirectional"]
            check = {**check, "name": "divergence.relative_bidirectional", "decides": True, "threshold": threshold}
            check["flags"] = None if check["score"] is None else passes(check, {})
        elif bidirectional and check["name"].startswith("divergence."):
            check = {**check, "decides": True}
        if check.get("decides") is False:
            continue
        if check["name"] == "target.collapse_excess":
            reference = (scan.get("reference_baseline") or {}).get("collapse", 0.0)
            score = None if check["score"] is None else collapse_gain(scan["scores"]["collapse"], reference)
            threshold = collapse_gain(reference + check["threshold"], reference)  # the same bar, as a gain
            check = {**check, "name": "target.collapse_gain", "score": score, "threshold": threshold}
            check["flags"] = None if score is None else passes(check, {})
        if check["name"] in CHECK_OF_THRESHOLD.values():  # a check this release does not judge is left out
            checks.append(check)
    return checks


def judged_probe(report: dict) -> dict | None:
    """The report's top real-input probe that its token-collapse rule judged (by its gain on a bidirectional tower,
    else by its excess: the top row whose z-score is the rule's); None when that probe is not among the top rows."""
    scan = report["components"][0].get("scan", {})
    scores = {c["name"]: c["score"] for c in scan.get("checks", [])}
    top = ((scan.get("evidence") or {}).get("token_search") or {}).get("top") or []
    by_gain = scores.get("token_collapse.gain_z") is not None
    key, z = ("gain_z", scores["token_collapse.gain_z"]) if by_gain else ("collapse_z", scores.get("token_collapse.z"))
    judged = [row for row in top if z is not None and row.get(key) is not None and abs(row[key] - z) < 0.01]
    return judged[0] if judged else None


def load_as_scanned(suspect: str, reference: str, consumer: str | None = None, component: str | None = None):
    """The suspect and reference encoders loaded as a scan loads them: the suspect's ``component`` (else its
    first) read as ``consumer`` (else the pipeline's own) reads it, and the reference read the same way
    (audit/components.py); a lone reference encoder stands for any component. Returns ``(suspect, reference,
    read)``."""
    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.encoders.load import load_as_read, read_of
    from amdet_audit.sources import resolve

    def component_of(resolved, lone_ok: bool = False):
        if component is None or (lone_ok and len(resolved.components) == 1):
            return resolved.components[0]
        try:
            return resolved.component(component)
        except KeyError:
            raise SystemExit(f"{resolved.input}: no component {component!r}") from None

    suspect_target, reference_target = resolve(suspect), resolve(reference)
    part = component_of(suspect_target)
    read = read_of(consumer_for(consumer, suspect_target.pipeline_class), part)
    return (load_as_read(part, read), load_as_read(component_of(reference_target, lone_ok=True), read), read)


def record_checks(record: dict) -> list[dict]:
    """The judged checks (:func:`checks_of`) of a scan record's report; none when the scan wrote no report."""
    if not record.get("report"):
        return []
    return checks_of(json.loads(Path(record["report"]).read_text(encoding="utf-8")))


def load_rows(work: Path, base: str, mode: str = "reference", search: str = "full"
              ) -> list[tuple[bool, int, list[dict]]]:
    """(positive, scanned exit code, checks) per calibration model of ``base`` that has a report."""
    from report import scans_dir

    root = work / "calibration" / base
    scans = scans_dir(work, "calibration", base, mode, search)
    manifest = json.loads((root / "zoo" / "zoo.json").read_text(encoding="utf-8"))
    truth = {m["name"]: m["kind"] == "backdoored" for m in manifest["models"] if m["status"] == "built"}
    truth["clean-base"] = False
    rows = []
    for name, positive in sorted(truth.items()):
        record_path = scans / name / "record.json"
        if not record_path.is_file():
            continue
        record = json.loads(record_path.read_text(encoding="utf-8"))
        rows.append((positive, record["exit_code"], record_checks(record)))
    return rows


def passes(check: dict, thresholds: dict[str, float]) -> bool:
    """Whether one check flags under ``thresholds`` (its recorded threshold unless overridden)."""
    threshold = thresholds.get(check["name"], check["threshold"])
    if check["score"] is None:
        return False
    return check["score"] >= threshold if check["direction"] == ">=" else check["score"] <= threshold


def flagged(exit_code: int, checks: list[dict], thresholds: dict[str, float]) -> bool:
    """The verdict under ``thresholds``: a rule holds when all its checks flag; errors stay flagged."""
    return bool(flag_grid([(False, exit_code, checks)], single(thresholds)).reshape(-1)[0])


def single(thresholds: dict[str, float]) -> dict[str, list[float]]:
    """Thresholds as a one-point grid for :func:`flag_grid`."""
    return {name: [value] for name, value in thresholds.items()}


def rates(flags: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """F1, precision, recall and benign FPR from flags [rows, *grid] and ground truth [rows] (0 when undefined)."""
    tp, fp = flags[positive].sum(axis=0), flags[~positive].sum(axis=0)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = tp / max(int(positive.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"f1": f1, "precision": precision, "recall": recall, "fpr": fp / max(int((~positive).sum()), 1)}


def figures(rows, thresholds: dict[str, float]) -> dict[str, float]:
    """F1 and benign FPR of the rows under ``thresholds``."""
    positive = np.array([p for p, _, _ in rows], dtype=bool)
    return {k: float(v) for k, v in rates(flag_grid(rows, single(thresholds)).reshape(len(rows)), positive).items()}


#: policy threshold name -> the scan check it applies to
CHECK_OF_THRESHOLD = {"collapse_gain": "target.collapse_gain", "same_target_rate": "target.same_target_rate",
                      "anchor_cosine": "target.anchor_similarity", "relative_divergence": "divergence.relative",
                      "divergence_consistency": "divergence.consistency",
                      "divergence_anchor_cosine": "divergence.anchor_similarity",
                      "reference_free_collapse": "target.collapse", "token_excess": "token_collapse.excess",
                      "differential_collapse": "target.differential_collapse",
                      "bidirectional_divergence": "divergence.relative_bidirectional",
                      "token_excess_z": "token_collapse.z", "token_gain": "token_collapse.gain",
                      "token_gain_z": "token_collapse.gain_z", "token_shift": "token_shift.size",
                      "token_shift_z": "token_shift.z"}


def default_thresholds() -> dict[str, float]:
    """Today's default thresholds, by the check name they apply to."""
    from dataclasses import asdict

    from amdet_audit.audit.policy import load_thresholds

    return {CHECK_OF_THRESHOLD[k]: v for k, v in asdict(load_thresholds()).items()}


def flag_grid(rows, knobs: dict[str, list[float]]) -> np.ndarray:
    """[rows, *knob grid] whether each row is flagged at every combination of ``knobs`` values (other checks keep
    the thresholds their reports recorded); a rule holds when all its checks flag, errors stay flagged."""
    names = list(knobs)
    shape = tuple(len(knobs[n]) for n in names)
    out = np.zeros((len(rows), *shape), dtype=bool)
    for i, (_, code, checks) in enumerate(rows):
        if code == 2 or not checks:
            out[i] = code != 0
            continue
        rules: dict[str, np.ndarray] = {}
        for check in checks:
            holds = rules.setdefault(check["name"].split(".")[0], np.ones(shape, dtype=bool))
            if check["name"] not in knobs:
                holds &= passes(check, {})
            elif check["score"] is None:
                holds &= False
            else:
                values = np.array(knobs[check["name"]])
                ok = check["score"] >= values if check["direction"] == ">=" else check["score"] <= values
                axis = [1] * len(names)
                axis[names.index(check["name"])] = -1
                holds &= ok.reshape(axis)
        out[i] = np.logical_or.reduce(list(rules.values()))
    return out


def suggest(rows, max_fpr: float, knobs: dict[str, list[float]] = KNOBS
            ) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """The chosen thresholds, their calibration figures, and each knob's range on the best plateau.

    Every combination of ``knobs`` values is scored at once; the current default thresholds
    (policies/default.yaml) are kept when they are on the best plateau already, else the plateau point nearest
    its per-knob middle.
    """
    names = list(knobs)
    values, best = best_plateau(rows, max_fpr, knobs)
    ranges = {n: [float(values[:, k].min()), float(values[:, k].max())] for k, n in enumerate(names)}
    current = figures(rows, default_thresholds())
    if current["f1"] >= best and current["fpr"] <= max_fpr:
        return {}, current, ranges
    chosen = {n: round(v, 4) for n, v in plateau_middle(values, knobs).items()}
    return chosen, figures(rows, chosen), ranges


def best_plateau(rows, max_fpr: float, knobs: dict[str, list[float]]) -> tuple[np.ndarray, float]:
    """Every knob combination [n, knobs] with the best F1 among those at benign FPR <= ``max_fpr`` (the lowest FPR
    when none is), and that F1."""
    names = list(knobs)
    positive = np.array([p for p, _, _ in rows], dtype=bool)
    grid = rates(flag_grid(rows, knobs), positive)
    f1, fpr = grid["f1"], grid["fpr"]
    allowed = fpr <= max_fpr if (fpr <= max_fpr).any() else fpr == fpr.min()
    best = float(f1[allowed].max())
    plateau = np.argwhere(allowed & (f1 == best))  # [n, knobs] grid indices
    return np.array([[knobs[n][j] for n, j in zip(names, idx, strict=True)] for idx in plateau]), best


def plateau_middle(values: np.ndarray, knobs: dict[str, list[float]]) -> dict[str, float]:
    """The plateau point nearest its per-knob median, in grid steps (margin on every side)."""
    names = list(knobs)
    steps = np.array([knobs[n][1] - knobs[n][0] for n in names])
    middle = np.median(values, axis=0)
    choice = values[int(np.abs((values - middle) / steps).sum(axis=1).argmin())]
    return {n: float(v) for n, v in zip(names, choice, strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--bases", default="canary", type=lambda s: s.split(","))
    parser.add_argument("--max-fpr", type=float, default=0.02)
    parser.add_argument("--reference-free", action="store_true", help="calibrate the reference-free mode")
    parser.add_argument("--search", default="full", choices=["full", "light"], help="the scans of this preset")
    args = parser.parse_args(argv)
    from report import scan_mode

    mode = scan_mode(args.reference_free)
    per_base = {base: load_rows(args.work, base, mode, args.search) for base in args.bases}
    rows = [row for base_rows in per_base.values() for row in base_rows]
    if not rows:
        raise SystemExit(f"no calibration scans of {', '.join(args.bases)} under {args.work}: run run_efficacy.py "
                         f"{'--reference-free ' if args.reference_free else ''}first")
    thresholds, figs, ranges = suggest(rows, args.max_fpr, KNOBS_REFERENCE_FREE if args.reference_free else KNOBS)
    chosen = {**default_thresholds(), **thresholds}
    print(json.dumps({"models": len(rows), "as_scanned": figures(rows, {}),
                      "with_current_defaults": figures(rows, default_thresholds()),
                      "suggested": thresholds or "keep the current defaults (on the best plateau)",
                      "with_suggested": figs, "best_plateau_ranges": ranges,
                      "per_base_with_suggested": {b: {"models": len(r), **figures(r, chosen)}
                                                  for b, r in per_base.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
