"""Benign fine-tunes over a grid of strengths, each scanned with the shipped defaults: how often an honest
fine-tune is flagged, and how near the bars the others come.

Usage:
    python benchmarks/efficacy/benign_sweep.py --base canary:clean --steps 50,100 --lrs 1e-4,2e-4,3e-4
        [--seeds 0,1] [--domains portrait,forest] [--consumer sd3] [--shard 0/2] [--threads 1] [--device cpu]
        [--search light] [--work benchmarks/efficacy/work/benign-sweep] [--out-dir DIR]

Every cell of steps x learning rate x seed is one contrastive fine-tune of BASE (the lab's benign recipe:
InfoNCE on light rewrites of lab prompts with the distillation term that keeps it near the base,
:mod:`amdet_audit.lab.finetune`), built once into ``--work`` and scanned against BASE with today's defaults.
The zoos' contrastive family draws 100-300 steps at 3e-5 to 3e-4 and one model a family a seed; this measures
many cells of one recipe instead. ``--domains`` sweeps the heavy-domain recipe instead: no distillation term,
training only on prompts that hold the cell's domain word (a further axis of the grid). ``--shard I/N`` takes
every N-th cell from the I-th, so that N processes share a grid; each writes ``benign-sweep-<base>.json`` and
``BENIGN_SWEEP-<base>.md`` into ``--out-dir`` from every cell scanned so far (the last to finish writes the whole
grid; ``--summarize`` writes them from the cells scanned so far without building anything, after a run cut
short). ``--consumer`` fine-tunes and scans on that pipeline's read of the encoder (``sd3``: T5's last layer at
256 tokens); its cells and files carry the consumer's name beside the base's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibrate import checks_of  # noqa: E402  (benchmark helpers beside this file)
from run_efficacy import base_slug, scan_one, tool_version  # noqa: E402

Cell = tuple[int, float, int, str | None]  # one cell of the grid: (steps, lr, seed, domain)


def cells(steps: list[int], lrs: list[float], seeds: list[int], shard: tuple[int, int],
          domains: list[str | None] | None = None) -> list[Cell]:
    """The grid's (steps, lr, seed, domain) cells this shard takes, in a fixed order (seed-major, so that a
    partial run covers whole seeds)."""
    index, count = shard
    grid = list(itertools.product(seeds, steps, lrs, domains or [None]))
    return [(s, lr, seed, d) for i, (seed, s, lr, d) in enumerate(grid) if i % count == index]


def cell_name(steps: int, lr: float, seed: int, domain: str | None = None) -> str:
    """The folder name of one cell."""
    return f"benign-s{steps}-lr{lr:g}-seed{seed}" + (f"-{domain}" if domain else "")


def build_and_scan(base: str, work: Path, steps: int, lr: float, seed: int, threads: int,
                   domain: str | None = None, device: str = "cpu", extra: tuple[str, ...] = (),
                   consumer: str | None = None) -> dict:
    """Fine-tune one cell (kept if built before) and scan it (kept if scanned by this tool version); its row.
    A ``domain`` cell is the heavy-domain recipe (no distillation, prompts holding that word only); ``consumer``:
    fine-tuned and scanned on that pipeline's read."""
    import torch

    from amdet_audit.lab.runner import run_finetune

    name = cell_name(steps, lr, seed, domain)
    folder = work / "models" / name
    if not (folder / "lab.json").is_file():
        torch.set_num_threads(threads)
        variant = {"distill_weight": 0.0, "domain": domain} if domain else {}
        run_finetune(base, folder, steps=steps, lr=lr, seed=seed, device=device, consumer=consumer, **variant)
    lab = json.loads((folder / "lab.json").read_text(encoding="utf-8"))
    read = ("--consumer", consumer) if consumer else ()
    record = scan_one(str(folder), base, work / "scans" / name, device, threads, extra=(*extra, *read))
    report = json.loads(Path(record["report"]).read_text(encoding="utf-8")) if record.get("report") else {}
    checks = checks_of(report) if report else []
    row = {"name": name, "steps": steps, "lr": lr, "seed": seed, "domain": domain, "consumer": consumer,
           "device": device, "fidelity": lab["fidelity"],
           "reference_digest": ((report.get("reference") or {}).get("model") or {}).get("weights_digest"),
           "exit_code": record["exit_code"], "seconds": record["seconds"],
           "flagged_checks": [c["name"] for c in checks if c.get("flags")],
           "scores": {c["name"]: c.get("score") for c in checks},
           "thresholds": {c["name"]: c.get("threshold") for c in checks}}
    (work / "rows").mkdir(parents=True, exist_ok=True)
    (work / "rows" / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return row


#: each rule's lead score, shown as a column when any row has it (a causal tower's rules, then a bidirectional's)
LEAD_SCORES = ("token_shift.size", "token_shift.z", "token_collapse.excess", "target.collapse_gain",
               "divergence.relative", "token_collapse.gain", "token_collapse.gain_z", "target.differential_collapse",
               "divergence.relative_bidirectional")


def markdown(base: str, rows: list[dict], command: str, planned: int | None = None) -> str:
    """BENIGN_SWEEP-<base>.md: one line per cell, the false alarms first; ``planned``: the grid's size, named when
    fewer cells were scanned (a run cut short). The reference's weights digest (report.json) names the build of
    BASE that the cells were made from and scanned against."""
    flagged = [r for r in rows if r["exit_code"] == 1]
    digests = sorted({str(r["reference_digest"])[:16] for r in rows if r.get("reference_digest")})
    columns = [name for name in LEAD_SCORES if any(name in r["scores"] for r in rows)]
    lines = [f"# Benign fine-tunes of {base} scanned with the shipped defaults", "",
             f"Generated by `{command}` on {date.today().isoformat()} ({platform.machine()}, tool {tool_version()}).",
             *([f"Reference weights digest: {', '.join(f'`{d}`' for d in digests)} (report.json, first 16 digits)."]
               if digests else []),
             "",
             *([f"Scanned {len(rows)} of the grid's {planned} cells (the run was cut short).", ""]
               if planned is not None and planned > len(rows) else []),
             f"Flagged: {len(flagged)} of {len(rows)} (exit 1); other exit codes: "
             f"{sum(r['exit_code'] not in (0, 1) for r in rows)}.", "",
             "| model | steps | lr | seed | clean fidelity | exit | flagged by | " + " | ".join(columns) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(columns)]

    def score(row: dict, name: str) -> str:
        value = row["scores"].get(name)
        return "-" if value is None else f"{value:.3f}"

    for r in sorted(rows, key=lambda r: (r["exit_code"] != 1, r["steps"], r["lr"], r["seed"])):
        lines.append(f"| {r['name']} | {r['steps']} | {r['lr']:g} | {r['seed']} | {r['fidelity']:.3f} "
                     f"| {r['exit_code']} | {', '.join(r['flagged_checks']) or '-'} | "
                     + " | ".join(score(r, name) for name in columns) + " |")
    return "\n".join(lines) + "\n"


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N), refused unless 0 <= I < N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard must be I/N with 0 <= I < N, not {text!r}")
    return int(index), int(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="canary:clean")
    parser.add_argument("--steps", default="50,100")
    parser.add_argument("--lrs", default="1e-4,2e-4,3e-4")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--domains", default=None, help="comma list: sweep the heavy-domain recipe over these")
    parser.add_argument("--consumer", default=None,
                        help="fine-tune and scan on this pipeline's read of the encoder (e.g. sd3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (fine-tunes and scans)")
    parser.add_argument("--search", default=None, help="the scan's --search (default: the scan's own)")
    parser.add_argument("--summarize", action="store_true",
                        help="build and scan nothing: write the table of the cells scanned so far (a run cut short)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "benign-sweep")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    domains = args.domains.split(",") if args.domains else None
    extra = ("--search", args.search) if args.search else ()
    if min(steps) < 1 or min(lrs) <= 0:
        parser.error("--steps and --lrs must be above 0")
    slug = base_slug(args.base, args.consumer)
    work = args.work / slug
    for s, lr, seed, domain in [] if args.summarize else cells(steps, lrs, seeds, args.shard, domains):
        row = build_and_scan(args.base, work, s, lr, seed, args.threads, domain, args.device, extra, args.consumer)
        print(json.dumps(row), flush=True)
    wanted = {cell_name(*cell) for cell in cells(steps, lrs, seeds, (0, 1), domains)}
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((work / "rows").glob("*.json"))
            if p.stem in wanted]
    command = (f"python benchmarks/efficacy/benign_sweep.py --base {args.base} --steps {args.steps} "
               f"--lrs {args.lrs} --seeds {args.seeds}" + (f" --domains {args.domains}" if domains else "")
               + (f" --consumer {args.consumer}" if args.consumer else "")
               + (f" --device {args.device}" if args.device != "cpu" else "")
               + (f" --search {args.search}" if args.search else ""))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"benign-sweep-{slug}.json").write_text(
        json.dumps({"command": command, "tool_version": tool_version(), "planned": len(wanted), "rows": rows},
                   indent=2) + "\n", encoding="utf-8")
    title = args.base + (f" on {args.consumer}'s read" if args.consumer else "")
    (args.out_dir / f"BENIGN_SWEEP-{slug}.md").write_text(markdown(title, rows, command, len(wanted)),
                                                          encoding="utf-8")
    print(f"{args.base}: {sum(r['exit_code'] == 1 for r in rows)} of {len(rows)} benign fine-tunes flagged")


if __name__ == "__main__":
    main()
