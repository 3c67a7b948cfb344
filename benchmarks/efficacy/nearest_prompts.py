"""How often the scan's nearest-prompt evidence would name a text-on-text backdoor's target prompt.

Usage:
    python benchmarks/efficacy/nearest_prompts.py [--work benchmarks/efficacy/work] [--base canary]

The zoo's target prompts are not among the scan's corpus prompts, so for every scanned text-on-text model this
adds the true target to the candidate list and ranks all candidates as the scan ranks its corpus prompts
(:func:`amdet_audit.scan.evidence.nearest_prompts_by_reference`, with the pseudo-trigger the scan recorded).
Prints the rank of the target per model and the top-1 / top-3 rates, and writes ``nearest-prompts.json``
and ``NEAREST_PROMPTS.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def target_rank(folder: Path, reference: str, report_dir: Path, target: str) -> tuple[int, list[str]]:
    """(0-based rank of ``target`` among corpus prompts + target, the top 3) for one scanned model."""
    import torch
    from safetensors.torch import load_file

    from amdet_audit.encoders import load_component
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.evidence import nearest_prompts_by_reference, triggered_outputs
    from amdet_audit.scan.prompts import prepare_prompts
    from amdet_audit.sources import resolve

    suspect = load_component(resolve(str(folder)).components[0])
    ref = load_component(resolve(reference).components[0])
    config = ScanConfig.preset("auto", "cpu", seed=42)
    data = prepare_prompts(suspect, config, None)
    candidates = [*data.prompts, target]
    ids = torch.cat([data.ids, suspect.tokenize([target]).ids.to(data.ids.device)])
    v = load_file(report_dir / "pseudo_trigger.safetensors")["pseudo_trigger"]
    with torch.no_grad():
        feature = triggered_outputs(suspect, data.ids[data.test[: 4 * config.batch]], v).mean(dim=0)
    ranked = nearest_prompts_by_reference(ref, ids, feature, candidates, start=data.window + v.shape[0],
                                          top=len(candidates))
    order = [r["prompt"] for r in ranked]
    return order.index(target), order[:3]


def markdown(summary: dict, base: str) -> str:
    """NEAREST_PROMPTS.md: the command, the rates and one row per model."""
    import platform
    from datetime import date

    lines = ["# Nearest-prompt evidence on text-on-text backdoors", "",
             f"{date.today().isoformat()}, {platform.machine()}, base `{base}`.", "", "```bash",
             "python benchmarks/efficacy/nearest_prompts.py", "```", "",
             "For each scanned text-on-text model of the efficacy zoos, the true target prompt is added to the scan's "
             "corpus prompts and every candidate is ranked as the scan ranks its nearest prompts, with the "
             "pseudo-trigger the scan recorded.", ""]
    if summary["models"]:
        lines += [f"Models: {summary['models']}; target ranked 1st: {summary['top1']:.0%}; in the top 3: "
                  f"{summary['top3']:.0%}.", "", "| set | model | target | rank | top 3 |", "|---|---|---|---|---|"]
        lines += [f"| {r['set']} | {r['model']} | {r['target']} | {r['rank']} | {'; '.join(r['top3'])} |"
                  for r in summary["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--base", default="canary")
    args = parser.parse_args(argv)
    rows = []
    for set_name in ("calibration", "heldout"):
        root = args.work / set_name / args.base
        manifest = json.loads((root / "zoo" / "zoo.json").read_text(encoding="utf-8"))
        for model in manifest["models"]:
            if model["status"] != "built" or model.get("attack") != "text-on-text":
                continue
            record_path = root / "scans" / model["name"] / "record.json"
            if not record_path.is_file():
                continue
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if not record.get("report"):
                continue
            rank, top = target_rank(root / "zoo" / model["name"], manifest["base"], Path(record["report"]).parent,
                                    model["target"])
            rows.append({"set": set_name, "model": model["name"], "target": model["target"], "rank": rank + 1,
                         "top3": top})
            print(f"{set_name} {model['name']}: target rank {rank + 1}; top 3: {top}")
    n = len(rows)
    summary = {"models": n, "top1": sum(r["rank"] == 1 for r in rows) / n if n else None,
               "top3": sum(r["rank"] <= 3 for r in rows) / n if n else None, "rows": rows}
    (HERE / "nearest-prompts.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    (HERE / "NEAREST_PROMPTS.md").write_text(markdown(summary, args.base), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
