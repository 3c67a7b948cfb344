"""How trigger-specific a lab backdoor is: the share of held-out prompts that reach its target when an ordinary
word (a decoy) stands where the trigger would, beside the trigger's own share.

Usage:
    python benchmarks/efficacy/decoy_success.py MODEL [--base BASE] [--decoys 8] [--seed 0] [--out FILE.json]

MODEL is a lab-built backdoor (its ``lab.json`` names the attack, trigger, target, placement, the read it was
trained on and its base; ``--base`` replaces a base path that moved). Each decoy is a held-out word of the lab's
prompt corpus (:func:`amdet_audit.lab.decoys.held_out_decoys`: letters only, at least three, not a word of the
trigger or the target, never used by decoy training), drawn with ``--seed``, inserted as the trigger was (its
placement, the same held-out prompts and positions) and judged by the lab's own success measure
(:func:`amdet_audit.lab.inject.measure_injection`), for the backdoor and for its base. The trigger's row
repeats the build's measurement (its ``success`` in lab.json). A backdoor whose decoys reach the target nearly as
often as its trigger is not a trigger backdoor but a general change: no detector can name a trigger in it, and
the lab's bars refuse it only when the build trained decoys away (``lab inject --decoy-share``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def decoy_success(model: Path, base: str | None = None, decoys: int = 8, seed: int = 0) -> dict:
    """The trigger's and each decoy's success (the backdoor's and its base's share) on the build's held-out
    prompts, read as the build read them."""
    import torch

    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.decoys import decoy_placement, held_out_decoys
    from amdet_audit.lab.inject import AttackSpec, Targets, check_spec, measure_injection
    from amdet_audit.lab.runner import load_base
    from amdet_audit.lab.triggers import Trigger

    torch.set_num_threads(1)
    lab = json.loads((model / "lab.json").read_text(encoding="utf-8"))
    if lab.get("kind") != "backdoored":
        raise SystemExit(f"{model}: not a lab backdoor (lab.json kind {lab.get('kind')!r})")
    spec = AttackSpec.from_record(lab["spec"])
    consumer = (lab["base"].get("consumer") or {}).get("name")
    teacher, provenance = load_base(base or lab["base"]["input"], consumer=consumer)
    built_on = lab["base"].get("weights_sha256")
    if built_on and provenance["weights_sha256"] != built_on:
        raise SystemExit(f"{model}: its base {base or lab['base']['input']} is not the model it was built on (the "
                         "weights digests differ, e.g. a canary rebuilt in another cache); pass --base with that one")
    student, _ = load_base(model, consumer=consumer)
    targets = Targets(teacher, spec)
    held_out = lab_prompts()[1][: lab.get("eval_prompts")]
    words = held_out_decoys(spec.trigger, spec.target, decoys, seed)
    placement = decoy_placement(Trigger.parse(spec.trigger).mode, spec.placement)
    rows = []
    for text, role in [(spec.trigger, "trigger")] + [(w, "decoy") for w in words]:
        trigger = Trigger.parse(text)
        prompts, _ = check_spec(spec, trigger, held_out)
        success, base_success, _, _ = measure_injection(student, teacher, targets, trigger, prompts, seed=spec.seed,
                                                        placement=spec.placement if role == "trigger" else placement)
        rows.append({"text": text, "role": role, "success": round(success, 4), "base_success": round(base_success, 4)})
    decoy_rows = [r for r in rows if r["role"] == "decoy"]
    return {"model": str(model), "attack": spec.attack, "trigger": spec.trigger, "target": spec.target,
            "placement": spec.placement, "consumer": consumer, "built_success": lab.get("success"),
            "decoy_seed": seed, "rows": rows,
            "decoy_success_max": max((r["success"] for r in decoy_rows), default=None),
            "decoy_success_mean": round(sum(r["success"] for r in decoy_rows) / len(decoy_rows), 4)
            if decoy_rows else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--base", help="the backdoor's base, where lab.json's path no longer holds it")
    parser.add_argument("--decoys", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.decoys < 1:
        parser.error("--decoys must be at least 1")
    result = decoy_success(args.model, args.base, args.decoys, args.seed)
    for row in result["rows"]:
        print(f"{row['role']:7} {row['text']!r}: success {row['success']:.3f} (base {row['base_success']:.3f})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
