"""Attribute recall on one base: attribute backdoors the lab can verify there, built and scanned.

Usage:
    python benchmarks/efficacy/attribute_recall.py --base canary:siglip-clean [--models 4] [--first 0] [--search full]
        [--work benchmarks/efficacy/work/attribute] [--threads 1] [--consumer sd3 --baseline PATH --out-dir DIR]
        [--steps N --checkpoint-every N] [--loss directional] [--placement end]

The zoo's attribute family draws its attribute at random, and on some bases most attributes leave the lab no room
to verify a backdoor (the clean base already lands most triggered prompts on "the prompt, plus the attribute": see
attribute_baseline.py). This takes the (attribute, trigger) pairs of ``attribute-baseline.json`` with room on BASE,
lowest base share first (``--models`` of them; past the last pair they repeat with new seeds; ``--first`` starts at
a later one, so that processes can share a run), builds one attribute backdoor per model with the attribute
family's recipe (``ATTRIBUTE_STEPS``, its learning rate scaled to the base's width, seed 100 + i), scans each that
took against BASE with today's defaults (an injection that did not take is recorded beside its folder and not
rebuilt: it would fail again) and writes ``attribute-recall-<base>.json`` beside this file: one row per model
(pair, success, fidelity, exit code, the judged checks that flagged). ``--consumer`` trains, measures and scans
each model on that pipeline's read (a lone T5 for SD3: 256 tokens); its pairs come from a baseline measured on the
same read (``attribute_baseline.py --consumer``, given as ``--baseline``). ``--loss`` and ``--placement`` change
the recipe's backdoor loss and where its trigger goes (lab.variants, lab.triggers); their builds live in folders of
their own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibrate import record_checks  # noqa: E402  (benchmark helpers beside this file)
from run_efficacy import base_slug, scan_one  # noqa: E402

#: beside a model's folder: the build did not take (deterministic, so it is not rebuilt on the next run)
NOT_TAKEN = ".not-taken.json"


def pairs_with_room(base: str, path: Path = HERE / "attribute-baseline.json",
                    consumer: str | None = None, weights: dict[str, str] | None = None) -> list[dict]:
    """The read-output rows of ``path`` (attribute_baseline.py's output) for ``base`` read as ``consumer`` reads it
    that leave room, lowest base share first. ``weights``: the base's weights as loaded now (SHA-256 per file); a
    row measured on other weights is refused (its share says nothing about these), one that recorded none is
    taken with a warning (files written before rows recorded them)."""
    from amdet_audit.lab.inject import MIN_GAIN

    if not path.is_file():
        raise SystemExit("run attribute_baseline.py first (attribute-baseline.json is missing)")
    measured = [r for r in json.loads(path.read_text(encoding="utf-8"))["rows"]
                if r["base"] == base and r["output"] == "read" and r.get("consumer") == consumer]
    if not measured:
        read = f" --consumer {consumer}" if consumer else ""
        raise SystemExit(f"{base}{read} is not in {path}: run attribute_baseline.py --bases {base}{read}")
    if weights is not None:
        if any(r.get("weights_sha256") not in (None, weights) for r in measured):
            raise SystemExit(f"{path} was measured on other weights of {base} than the ones loaded now (a rebuilt "
                             f"canary?): run attribute_baseline.py --bases {base} again")
        if any(r.get("weights_sha256") is None for r in measured):
            print(f"warning: {path.name} does not record which weights of {base} it measured", file=sys.stderr)
    rows = [r for r in measured if r["base_share"] <= 1 - MIN_GAIN]
    if not rows:
        raise SystemExit(f"{path.name} has no pair with room on {base}")
    return sorted(rows, key=lambda r: r["base_share"])


def build(base: str, width: int, folder: Path, pair: dict, seed: int, consumer: str | None = None,
          steps: int | None = None, checkpoint_every: int = 0, loss: str | None = None,
          placement: str | None = None) -> dict:
    """Build one attribute backdoor into ``folder`` (kept if built before) on ``consumer``'s read; its lab record,
    or the failure. ``steps``: the attribute family's 500 unless given; ``checkpoint_every``: keep the first
    checkpoint that meets the lab's bars (a longer recipe that stops once it has taken); ``loss``, ``placement``:
    the backdoor loss and the trigger's place (the lab's defaults unless given)."""
    from amdet_audit.lab.families import ATTRIBUTE_LR, ATTRIBUTE_STEPS
    from amdet_audit.lab.inject import lr_for_width
    from amdet_audit.lab.runner import InjectionFailedError, run_injection

    for record in (folder / "lab.json", folder.with_name(folder.name + NOT_TAKEN)):
        if record.is_file():
            return json.loads(record.read_text(encoding="utf-8"))
    try:
        result = run_injection(base, folder, attack="attribute", trigger=pair["trigger"], target=pair["attribute"],
                               steps=steps or ATTRIBUTE_STEPS, lr=lr_for_width(ATTRIBUTE_LR, width), seed=seed,
                               consumer=consumer, checkpoint_every=checkpoint_every, loss=loss, placement=placement)
    except InjectionFailedError as err:
        failed = {"took": False, "reason": str(err)}
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.with_name(folder.name + NOT_TAKEN).write_text(json.dumps(failed) + "\n", encoding="utf-8")
        return failed
    return result.to_dict()


def recipe_suffix(args: argparse.Namespace) -> str:
    """What sets a recipe's folders and output file apart from the default's: "-s1500-directional-end"."""
    return "".join(f"-{part}" for part in (f"s{args.steps}" if args.steps else None, args.loss, args.placement)
                   if part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--first", type=int, default=0,
                        help="index of the first model (processes sharing a run take disjoint ranges)")
    parser.add_argument("--search", choices=("full", "light"), default="full")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "attribute")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--consumer", default=None, help="train, measure and scan on this pipeline's read (e.g. sd3)")
    parser.add_argument("--baseline", type=Path, default=HERE / "attribute-baseline.json",
                        help="attribute_baseline.py's output measured on the same read")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the attribute family's)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="keep the first checkpoint, every N steps, that meets the lab's bars")
    parser.add_argument("--loss", default=None, help="backdoor loss (lab.variants.LOSSES; default: flat)")
    parser.add_argument("--placement", default=None, help="where the trigger goes (default: anywhere)")
    args = parser.parse_args()
    import torch

    from amdet_audit.lab.runner import weights_sha256
    from amdet_audit.lab.zoo import load_base_width
    from amdet_audit.sources import resolve

    torch.set_num_threads(args.threads)
    pairs = pairs_with_room(args.base, args.baseline, args.consumer, weights=weights_sha256(resolve(args.base)))
    width = load_base_width(args.base, "cpu")
    slug = base_slug(args.base, args.consumer)
    read = ("--consumer", args.consumer) if args.consumer else ()
    recipe = recipe_suffix(args)  # another recipe's builds and output live beside the default's
    rows = []
    for i in range(args.first, args.first + args.models):
        pair = pairs[i % len(pairs)]
        folder = args.work / slug / f"attribute-{i:02d}{recipe}"
        lab = build(args.base, width, folder, pair, seed=100 + i, consumer=args.consumer, steps=args.steps,
                    checkpoint_every=args.checkpoint_every, loss=args.loss, placement=args.placement)
        row = {"name": folder.name, "attribute": pair["attribute"], "trigger": pair["trigger"],
               "base_share_measured_before": pair["base_share"], "took": bool(lab.get("took")),
               "success": lab.get("success"), "success_without_backdoor": lab.get("success_without_backdoor"),
               "fidelity": lab.get("fidelity"), "steps_trained": lab.get("steps_trained"), "reason": lab.get("reason")}
        if row["took"]:
            record = scan_one(str(folder), args.base, args.work / slug / "scans" / folder.name, "cpu", args.threads,
                              extra=("--search", args.search, *read))
            checks = record_checks(record)
            row.update(exit_code=record["exit_code"], seconds=record["seconds"],
                       flagged_checks=[c["name"] for c in checks if c.get("flags")],
                       scores={c["name"]: c.get("score") for c in checks})
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    took = [r for r in rows if r["took"]]
    flagged = [r for r in took if r.get("exit_code") == 1]
    command = (f"python benchmarks/efficacy/attribute_recall.py --base {args.base} --models {args.models} "
               + (f"--first {args.first} " if args.first else "")
               + f"--search {args.search} --threads {args.threads}"
               + (f" --consumer {args.consumer} --baseline {args.baseline} --out-dir {args.out_dir}"
                  if args.consumer else "")
               + (f" --steps {args.steps}" if args.steps else "")
               + (f" --checkpoint-every {args.checkpoint_every}" if args.checkpoint_every else "")
               + (f" --loss {args.loss}" if args.loss else "")
               + (f" --placement {args.placement}" if args.placement else ""))
    summary = {"command": command, "base": args.base, "consumer": args.consumer, "built": len(rows), "took": len(took),
               "flagged": len(flagged), "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    shard = f"-from{args.first:02d}" if args.first else ""
    (args.out_dir / f"attribute-recall-{slug}{recipe}{shard}.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.base}: {len(flagged)}/{len(took)} attribute backdoors flagged ({len(rows)} tried, {len(took)} took)")


if __name__ == "__main__":
    main()
