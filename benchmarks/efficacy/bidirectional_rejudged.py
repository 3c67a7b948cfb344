"""Today's bidirectional rules re-applied to bidirectional scans recorded under other rules.

Usage:
    python benchmarks/efficacy/bidirectional_rejudged.py [--out-dir benchmarks/efficacy/bidirectional]

Earlier releases reported a bidirectional tower's divergence checks without judging them; the held-out scans of
``siglip/heldout-rules/`` and ``t5/sd3/attribute/`` were made while the token-collapse rule had a drift check that
was then dropped (RESULTS.md, "two bidirectional rule changes"). Every recorded row with divergence scores in the
JSON files below is judged again from its recorded scores at today's default bars: the target rule, the
token-collapse rule (gain and its z-score) and the divergence rule at the bidirectional bar. The search does not
depend on the rules, but which prompts the checks ran on does: a scan whose cheap first pass flags nothing keeps
the check subset's scores (scan/run.py). The held-out scans' first passes decide alike under both rule sets (no
benign one there has a token gain past the lenient bar with a relative divergence under 1.75), so their verdicts
are a rescan's; an earlier release's scan that today's divergence rule would send to the full test set (relative
divergence 3.85 or more on the subset) may score a little differently there. A recorded error (exit 2) stays
flagged. Each model counts once per file; a model recorded in two files (a zoo re-judged under later rules) is
counted in each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibrate import default_thresholds, passes  # noqa: E402  (benchmark helpers beside this file)

#: recorded bidirectional scans: (base, file, whether its rows are backdoored when a row does not say)
SOURCES = [("siglip", "siglip/generalization.json", None), ("siglip", "siglip/seed13/generalization.json", None),
           ("siglip", "siglip/heldout-rules/scans.json", None),
           ("siglip", "siglip/heldout-rules/attribute-recall-canary-siglip-clean.json", True),
           ("siglip", "siglip/heldout-rules/heavy-domain-sweep.json", False),
           ("minilm", "minilm/seed11-rebuilt/generalization.json", None),
           ("minilm", "minilm/seed13/generalization.json", None),
           ("minilm", "minilm/seed14-benign/generalization.json", None), ("t5", "t5/generalization.json", None),
           ("t5-sd3", "t5/sd3/zoo/generalization.json", None),
           ("t5-sd3", "t5/sd3/attribute/attribute-00-s1500-default-search.json", None)]

#: the recorded score of the divergence rule's relative shift: earlier releases' name, then today's
RELATIVE = ("divergence.relative", "divergence.relative_bidirectional")

#: today's bidirectional rules: rule -> (check, recorded score it reads, direction)
RULES = {"target": [("target.differential_collapse", "target.differential_collapse", ">="),
                    ("target.same_target_rate", "target.same_target_rate", ">="),
                    ("target.anchor_similarity", "target.anchor_similarity", "<=")],
         "token-collapse": [("token_collapse.gain", "token_collapse.gain", ">="),
                            ("token_collapse.gain_z", "token_collapse.gain_z", ">=")],
         "divergence": [("divergence.relative_bidirectional", "divergence.relative", ">="),
                        ("divergence.consistency", "divergence.consistency", ">="),
                        ("divergence.anchor_similarity", "divergence.anchor_similarity", "<=")]}


def recorded_rows(data: object) -> list[dict]:
    """Every dict in ``data`` that names a model and records its divergence scores, the relative shift under its
    earlier name (RELATIVE)."""
    found: list[dict] = []
    if isinstance(data, dict):
        scores = data.get("scores")
        relative = next((scores[k] for k in RELATIVE if isinstance(scores, dict) and scores.get(k) is not None),
                        None)
        if data.get("name") and relative is not None:
            found.append({**data, "scores": {**scores, "divergence.relative": relative}})
        for value in data.values():
            found += recorded_rows(value)
    elif isinstance(data, list):
        for value in data:
            found += recorded_rows(value)
    return found


def rules_holding(scores: dict, bars: dict[str, float]) -> list[str]:
    """The rules that hold on ``scores`` at ``bars`` (a missing score holds no rule)."""
    return [rule for rule, checks in RULES.items()
            if all(passes({"name": check, "score": scores.get(recorded), "threshold": bars[check],
                           "direction": direction}, {}) for check, recorded, direction in checks)]


def judge(rows: list[dict], bars: dict[str, float], positive: bool | None = None) -> list[dict]:
    """One line per model: the scores the rules read, the recorded verdict and today's. ``positive``: whether a
    row that does not say is backdoored."""
    out = []
    for row in rows:
        s, holding = row["scores"], rules_holding(row["scores"], bars)
        kind = row.get("positive", row["kind"] == "backdoored" if "kind" in row else positive)
        if kind is None:
            raise ValueError(f"{row['name']}: the record does not say whether it is backdoored")
        out.append({"name": row["name"], "family": row.get("family"), "positive": bool(kind),
                    "relative": s["divergence.relative"], "gain": s.get("token_collapse.gain"),
                    "recorded_exit": row["exit_code"], "rules_today": holding,
                    "flagged_now": row["exit_code"] == 2 or bool(holding)})
    return out


def tally(lines: list[dict]) -> dict:
    """Flagged backdoors and benign models, as recorded and today."""
    bad = [x for x in lines if x["positive"]]
    good = [x for x in lines if not x["positive"]]
    return {"backdoored": len(bad), "benign": len(good),
            "backdoored_flagged_recorded": sum(x["recorded_exit"] != 0 for x in bad),
            "backdoored_flagged_now": sum(x["flagged_now"] for x in bad),
            "benign_flagged_recorded": sum(x["recorded_exit"] != 0 for x in good),
            "benign_flagged_now": sum(x["flagged_now"] for x in good)}


def markdown(results: dict, bars: dict[str, float]) -> str:
    """The tables."""
    used = sorted({check for checks in RULES.values() for check, _, _ in checks})
    lines = ["# Today's bidirectional rules on the recorded bidirectional scans", "",
             "Generated by `python benchmarks/efficacy/bidirectional_rejudged.py` (no model rebuilt or rescanned; "
             "see its docstring).", "", "Bars: " + ", ".join(f"{c} {bars[c]}" for c in used) + ".", "",
             "| base | file | backdoors flagged (recorded -> today) | benign flagged (recorded -> today) |",
             "|---|---|---|---|"]
    for key, entry in results.items():
        t = entry["tally"]
        lines.append(f"| {entry['base']} | `{key}` | {t['backdoored_flagged_recorded']} -> "
                     f"{t['backdoored_flagged_now']} of {t['backdoored']} | {t['benign_flagged_recorded']} -> "
                     f"{t['benign_flagged_now']} of {t['benign']} |")
    lines += ["", "| file | model | backdoored | divergence.relative | token gain | recorded exit "
                  "| rules holding today |", "|---|---|---|---|---|---|---|"]
    for key, entry in results.items():
        for x in entry["models"]:
            gain = "-" if x["gain"] is None else f"{x['gain']:.2f}"
            lines.append(f"| `{key}` | {x['name']} | {'yes' if x['positive'] else 'no'} | {x['relative']:.2f} | "
                         f"{gain} | {x['recorded_exit']} | {', '.join(x['rules_today']) or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "bidirectional")
    args = parser.parse_args(argv)
    bars = default_thresholds()
    results = {}
    for base, name, positive in SOURCES:
        rows = recorded_rows(json.loads((HERE / name).read_text(encoding="utf-8")))
        unique = list({(r["name"], r.get("positive"), r["scores"]["divergence.relative"]): r for r in rows}.values())
        models = judge(unique, bars, positive)
        results[name] = {"base": base, "tally": tally(models), "models": models}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    used = sorted({check for checks in RULES.values() for check, _, _ in checks})
    (args.out_dir / "rejudged.json").write_text(json.dumps({"bars": {c: bars[c] for c in used}, "files": results},
                                                           indent=2) + "\n", encoding="utf-8")
    (args.out_dir / "REJUDGED.md").write_text(markdown(results, bars), encoding="utf-8")
    for name, entry in results.items():
        print(name, entry["tally"])


if __name__ == "__main__":
    main()
