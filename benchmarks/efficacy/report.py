"""RESULTS.md and ROC plots (plain SVG, no plotting dependency) from the benchmark's results."""

from __future__ import annotations

from html import escape
from pathlib import Path

GOALS = {"f1": 0.95, "fpr": 0.02, "attribute_recall": 0.9}  # held-out goals (paper: F1 0.899, ~13% FPR)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def positive_int(text: str) -> int:
    """An argparse type for counts of workers and threads: 0 or less is refused, not taken as the default."""
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def fmt(value: object, digits: int = 3) -> str:
    """A figure for a table cell: rounded float, integer, or an en dash when missing."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_roc_svg(curves: dict[str, list[tuple[float, float]]], title: str, size: int = 360) -> str:
    """One SVG with a ROC polyline per curve, a diagonal, axes and a legend."""
    pad, legend = 40, 18 * len(curves) + 10
    width, height = size + 2 * pad, size + 2 * pad + legend
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{pad}" y="20" font-size="13">ROC, {escape(title)}</text>',
             f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#444"/>',
             f'<line x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>',
             f'<text x="{pad + size / 2 - 50}" y="{pad + size + 28}">false-positive rate</text>',
             f'<text x="12" y="{pad + size / 2 + 40}" transform="rotate(-90 12 {pad + size / 2 + 40})">'
             "true-positive rate</text>"]
    for i, (name, points) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}" for x, y in [*points, (1.0, 1.0)])
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        y = pad + size + 44 + 18 * i
        parts.append(f'<rect x="{pad}" y="{y - 9}" width="12" height="4" fill="{colour}"/>')
        parts.append(f'<text x="{pad + 18}" y="{y - 4}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def goal_lines(figures: dict) -> list[str]:
    """Plain statements of where one base's held-out figures meet or miss the goals."""
    lines = []
    f1, fpr = figures.get("f1"), figures.get("fpr")
    attribute = figures.get("per_attack", {}).get("attack:attribute", {}).get("recall")
    checks = [("F1", f1, GOALS["f1"], f1 is not None and f1 >= GOALS["f1"], ">="),
              ("benign false-positive rate", fpr, GOALS["fpr"], fpr is not None and fpr <= GOALS["fpr"], "<="),
              ("attribute recall", attribute, GOALS["attribute_recall"],
               attribute is not None and attribute >= GOALS["attribute_recall"], ">=")]
    for name, value, goal, met, op in checks:
        verdict = "met" if met else ("not measured" if value is None else "**missed**")
        lines.append(f"{name} {fmt(value)} (goal {op} {goal}): {verdict}")
    return lines


def set_table(results: dict, scores: tuple[str, ...]) -> list[str]:
    """The per-base table of one set, with the AUROC of each of ``scores``."""
    lines = ["| base | models (bd/benign) | precision | recall | F1 | benign FPR | inconclusive | "
             + "".join(f"AUROC {name} | " for name in scores) + "scan s median / p90 | peak RSS MiB |",
             "|---|---|---|---|---|---|---|" + "---|" * len(scores) + "---|---|"]
    for base, fig in sorted(results.items()):
        au = fig["auroc"]
        lines.append(
            f"| {base} | {fig['positives']}/{fig['models'] - fig['positives']} | {fmt(fig['precision'])} | "
            f"{fmt(fig['recall'])} | {fmt(fig['f1'])} | {fmt(fig['fpr'])} | {fig['inconclusive']} | "
            + "".join(f"{fmt(au.get(name))} | " for name in scores)
            + f"{fmt(fig['scan_seconds']['median'], 1)} / {fmt(fig['scan_seconds']['p90'], 1)} | "
            f"{fmt(fig['peak_rss_mib']['max'], 0)} |")
    return lines


def attack_table(results: dict) -> list[str]:
    """Recall per attack and trigger kind, and benign FPR, per base."""
    lines = ["| base | group | models | detected / flagged | rate |", "|---|---|---|---|---|"]
    for base, fig in sorted(results.items()):
        for group, g in fig["per_attack"].items():
            rate = g.get("recall", g.get("fpr"))
            lines.append(f"| {base} | {group} | {g['models']} | {g.get('detected', g.get('flagged'))} | {fmt(rate)} |")
    return lines


def scan_mode(reference_free: bool) -> str:
    """The scan mode a ``--reference-free`` flag selects: ``reference-free`` or ``reference``."""
    return "reference-free" if reference_free else "reference"


def mode_suffix(mode: str) -> str:
    """What a scan mode adds to the names of its scan folder and result files: nothing with a reference,
    ``-reference-free`` without."""
    return "" if mode == "reference" else f"-{mode}"


def run_suffix(mode: str, search: str = "full") -> str:
    """What a scan mode and search preset add to the names of their scan folders and result files: the mode's
    suffix, then ``-light`` for the light search (full-search runs keep the plain names)."""
    return mode_suffix(mode) + ("" if search == "full" else f"-{search}")


def scans_dir(work: Path, set_name: str, base: str, mode: str, search: str = "full") -> Path:
    """Where one set and base's scan records live, per scan mode (``reference`` or ``reference-free``) and
    search preset (another preset's scans are kept apart from the full search's, e.g. ``scans-light``)."""
    return work / set_name / base / f"scans{run_suffix(mode, search)}"


def render_markdown(output: dict, scores: tuple[str, ...]) -> str:
    """RESULTS.md: how it was run, both sets' tables (AUROC of ``scores``), ROC plots and the goals met or
    missed."""
    meta = output["meta"]
    mode, search = meta.get("mode", "reference"), meta.get("search", "full")
    suffix = run_suffix(mode, search)  # of the ROC plots this run wrote beside this file
    free = bool(mode_suffix(mode))
    light = " (light search)" if search == "light" else ""
    lines = [f"# Efficacy benchmark results{' (reference-free scans)' if free else ''}{light}", "",
             f"Tool {meta['tool_version']}, {meta['date']}, {meta['machine']}, device {meta['device']}, "
             f"{meta['workers']} parallel scans; wall time {meta['wall_seconds']} s.", "",
             "```bash", meta["command"], "```", "",
             "Zoo per base: " + "; ".join(f"{s} set {z['backdoored']} backdoored and {z['benign']} benign planned"
                                          for s, z in meta["zoo"].items())
             + " (injections that did not reach their success bar are dropped), plus the clean base. "
             f"Calibration seed {meta['seeds']['calibration']}, held-out seed {meta['seeds']['heldout']}. "
             "A model counts as flagged when the scan exits non-zero (1 backdoored, 2 inconclusive).", ""]
    if free:
        lines += ["Every model is scanned with `--reference-free`: the target rule only, on absolute thresholds "
                  "(`reference_free_collapse`, `same_target_rate`). The divergence rule needs a reference, so "
                  "attribute backdoors are not expected to be caught in this mode.", ""]
    partial = [f"{base} {set_name} {state['processed']} of {state['planned']}"
               for set_name, bases in meta.get("zoo_state", {}).items() for base, state in sorted(bases.items())
               if not state["complete"]]
    if partial:
        lines += ["**Incomplete zoos** (figures over the models built so far; recipes processed of planned, "
                  "built or dropped): " + "; ".join(partial) + ". Their figures are not the benchmark's result "
                  "until the build completes.", ""]
    if meta.get("rederived_scans"):
        lines += [f"{meta['rederived_scans']} scans were made under earlier default thresholds; their verdicts "
                  "are re-derived from the scores they recorded under today's thresholds (`--rederive`).", ""]
    for set_name in ("calibration", "heldout"):
        results = output.get(set_name) or {}
        if not results:
            continue
        lines += [f"## {set_name.capitalize()} set", "", *set_table(results, scores), "",
                  f"![ROC curves, {set_name} set](roc{suffix}-{set_name}.svg)", "",
                  "<details><summary>per attack</summary>", "", *attack_table(results), "", "</details>", ""]
    if output.get("heldout"):
        lines += ["## Goals (held-out set)", ""]
        if free:
            lines += ["The goals are set for scans with a reference; reference-free figures are held against them "
                      "for comparison only.", ""]
        states = meta.get("zoo_state", {}).get("heldout", {})
        for base, fig in sorted(output["heldout"].items()):
            partial = "" if states.get(base, {}).get("complete", True) else " (incomplete zoo: not yet a result)"
            lines += [f"- {base}{partial}: " + "; ".join(goal_lines(fig))]
        lines.append("")
    return "\n".join(lines)
