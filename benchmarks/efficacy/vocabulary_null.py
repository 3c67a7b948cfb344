"""Where the token-collapse rule's judged probe stands among every single piece of the vocabulary, at its placement.

Usage:
    python benchmarks/efficacy/vocabulary_null.py MODEL_FOLDER --report SCAN/report.json
        --reference canary:siglip-clean --out ROW.json [--sample N]
    python benchmarks/efficacy/vocabulary_null.py --summarize ROW.json... --out-dir DIR

The scan judges its strongest real-input probe against 16 random pieces per placement, pooled over both placements
(``scan/discrete.null_probes``). This scores each piece of the vocabulary (no special ids; ``--sample`` draws that
many, seed 0) inserted alone at the judged probe's placement, on the scan's test prompts, by the collapse gain the
rule judges (suspect beyond reference), and records the distribution: median, 1.4826 * MAD, 90th and 99th
percentiles, the five strongest pieces, and the judged probe's z-score against the median and MAD. It tells a
probe that stands alone over pieces that do nothing (a planted trigger) from one that tops a bulk of pieces that
all move the prompts (a fine-tune that made every foreign-script piece disruptive). ``lab.json`` in the folder
says whether the model is backdoored. ``--summarize`` writes ``VOCABULARY_NULL.md`` and ``vocabulary-null.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from calibrate import judged_probe, load_as_scanned  # noqa: E402  (benchmark helpers beside this file)


def spread(gains: list[float]) -> dict:
    """Median, 1.4826 * MAD, 90th and 99th percentiles of ``gains``."""
    import torch

    g = torch.tensor(gains)
    med = float(g.median())
    return {"median": round(med, 4), "mad": round(1.4826 * float((g - med).abs().median()), 4),
            "p90": round(float(g.quantile(0.9)), 4), "p99": round(float(g.quantile(0.99)), 4)}


def measure(folder: Path, report: Path, reference: str, sample: int | None = None) -> dict:
    """One model's row: its judged probe (from ``report``) against every (or ``sample``) vocabulary piece."""
    import torch

    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.discrete import MAD_FLOOR, Probe, ProbeRunner, special_ids
    from amdet_audit.scan.evidence import token_text
    from amdet_audit.scan.prompts import prepare_prompts
    from amdet_audit.scan.run import token_prompts

    torch.set_num_threads(1)
    jp = judged_probe(json.loads(report.read_text(encoding="utf-8")))
    if jp is None:
        raise SystemExit(f"{report}: the token-collapse rule's judged probe is not among the report's top rows")
    if not jp.get("token_ids"):
        raise SystemExit(f"{report}: the judged probe {jp['probe']!r} inserts no tokens (a substitution)")
    s, r, _ = load_as_scanned(str(folder), reference)
    cfg = ScanConfig.preset("auto", "cpu", causal=s.causal, family=s.family)
    runner = ProbeRunner(s, r, token_prompts(prepare_prompts(s, cfg), cfg), padding=cfg.padding_positions)
    banned = special_ids(s)
    ids = [t for t in range(s.token_embedding_matrix().shape[0]) if t not in banned]
    if sample is not None and sample < len(ids):
        ids = sorted(random.Random(0).sample(ids, sample))
    started = time.perf_counter()
    placement = jp["placement"]
    gains = {t: runner.score(Probe(label=str((t,)), placement=placement, tokens=(t,))).gain for t in ids}
    stats = spread(list(gains.values()))
    top = sorted(gains, key=gains.get, reverse=True)[:5]
    tokenizer = getattr(s, "tokenizer", None)
    lab = json.loads((folder / "lab.json").read_text(encoding="utf-8")) if (folder / "lab.json").is_file() else {}
    return {"name": folder.name, "kind": lab.get("kind"), "trigger": (lab.get("trigger") or {}).get("text"),
            "judged": {"probe": jp["probe"], "placement": placement, "tokens": len(jp["token_ids"]),
                       "gain": jp["collapse_gain"], "gain_z": jp["gain_z"]},
            "pieces": len(gains), **stats,
            "judged_z_vocabulary": round((jp["collapse_gain"] - stats["median"]) / max(stats["mad"], MAD_FLOOR), 1),
            "top": [{"piece": token_text(tokenizer, t), "gain": round(gains[t], 4)} for t in top],
            "seconds": round(time.perf_counter() - started, 1)}


def summarize(rows: list[dict], out_dir: Path, command: str) -> None:
    """VOCABULARY_NULL.md and vocabulary-null.json from the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, one thread per process"}
    (out_dir / "vocabulary-null.json").write_text(json.dumps({"meta": meta, "rows": rows}, ensure_ascii=False,
                                                             indent=1) + "\n", encoding="utf-8")
    lines = ["# The judged probe among every vocabulary piece at its placement", "",
             f"Generated by `{command}` on {meta['date']} ({meta['machine']}).", "",
             "| model | kind | judged probe | placement | gain (scan z) | pieces | median | MAD | p99 | "
             "z against the vocabulary | strongest pieces |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["kind"] != "backdoored", r["name"])):
        j = r["judged"]
        top = ", ".join(f"`{t['piece']}` {t['gain']:.2f}" for t in r["top"][:3])
        lines.append(f"| {r['name']} | {r['kind']} | `{j['probe']}` | {j['placement']} | {j['gain']:.3f} "
                     f"({j['gain_z']:.1f}) | {r['pieces']} | {r['median']:.3f} | {r['mad']:.3f} | {r['p99']:.3f} | "
                     f"{r['judged_z_vocabulary']:.1f} | {top} |")
    (out_dir / "VOCABULARY_NULL.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="*", type=Path)
    parser.add_argument("--report", type=Path, help="the model's scan report.json")
    parser.add_argument("--reference", default="canary:siglip-clean")
    parser.add_argument("--sample", type=int, default=None, help="score this many random pieces, not all")
    parser.add_argument("--out", type=Path, help="one model's row")
    parser.add_argument("--summarize", nargs="*", type=Path, help="rows to gather")
    parser.add_argument("--out-dir", type=Path, default=HERE / "siglip" / "vocabulary-null")
    args = parser.parse_args(argv)
    if args.summarize:
        rows = [json.loads(p.read_text(encoding="utf-8")) for p in args.summarize]
        summarize(rows, args.out_dir, "python benchmarks/efficacy/vocabulary_null.py MODEL --report REPORT "
                  f"--reference {args.reference} --out ROW.json (each model), then --summarize ROW.json...")
        return
    if len(args.model) != 1 or args.out is None or args.report is None:
        parser.error("one MODEL_FOLDER with --report and --out, or --summarize")
    if args.sample is not None and args.sample < 2:
        parser.error("--sample must be 2 or more")
    row = measure(args.model[0], args.report, args.reference, args.sample)
    args.out.write_text(json.dumps(row, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
