"""How trigger-specific a lab backdoor is: the share of held-out prompts that reach its target when an ordinary
word (a decoy) stands where the trigger would, beside the trigger's own share.

Usage:
    python benchmarks/efficacy/decoy_success.py MODEL [--base BASE] [--decoys 8] [--seed 0] [--out FILE.json]

MODEL is a lab-built backdoor (its ``lab.json`` names the attack, trigger, target, placement, the read it was
trained on and its base; ``--base`` replaces a base path that moved). Each decoy is a word of the lab's prompt
corpus (letters only, at least three, not a word of the trigger or the target), drawn with ``--seed``, inserted
as the trigger was (its placement, the same held-out prompts and positions) and judged by the lab's own success
measure (:func:`amdet_audit.lab.inject.measure_injection`), for the backdoor and for its base. The trigger's row
repeats the build's measurement (its ``success`` in lab.json). A backdoor whose decoys reach the target nearly as
often as its trigger is not a trigger backdoor but a general change: no detector can name a trigger in it, and
the lab's bars (which bound untriggered prompts only) do not refuse it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path


def decoy_words(count: int, seed: int, exclude: set[str]) -> list[str]:
    """``count`` corpus words drawn with ``seed`` (letters only, three or more, none of ``exclude``)."""
    from amdet_audit.lab.corpus import lab_prompts

    train, _ = lab_prompts()
    words = sorted({w for p in train for w in re.findall(r"[a-z]+", p.lower()) if len(w) >= 3} - exclude)
    return random.Random(seed).sample(words, min(count, len(words)))


def decoy_success(model: Path, base: str | None = None, decoys: int = 8, seed: int = 0) -> dict:
    """The trigger's and each decoy's success (the backdoor's and its base's share) on the build's held-out
    prompts, read as the build read them."""
    from dataclasses import fields

    import torch

    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.inject import AttackSpec, Targets, check_spec, measure_injection
    from amdet_audit.lab.runner import load_base
    from amdet_audit.lab.triggers import Trigger

    torch.set_num_threads(1)
    lab = json.loads((model / "lab.json").read_text(encoding="utf-8"))
    if lab.get("kind") != "backdoored":
        raise SystemExit(f"{model}: not a lab backdoor (lab.json kind {lab.get('kind')!r})")
    known = {f.name for f in fields(AttackSpec)}
    spec = AttackSpec(**{k: v for k, v in lab["spec"].items() if k in known})
    consumer = (lab["base"].get("consumer") or {}).get("name")
    teacher, _ = load_base(base or lab["base"]["input"], consumer=consumer)
    student, _ = load_base(model, consumer=consumer)
    targets = Targets(teacher, spec)
    held_out = lab_prompts()[1][: lab.get("eval_prompts")]
    exclude = set(re.findall(r"[a-z]+", f"{spec.trigger} {spec.target}".lower()))
    rows = []
    for text, role in [(spec.trigger, "trigger")] + [(w, "decoy") for w in decoy_words(decoys, seed, exclude)]:
        trigger = Trigger.parse(text)
        prompts, _ = check_spec(spec, trigger, held_out)
        success, base_success, _, _ = measure_injection(student, teacher, targets, trigger, prompts, seed=spec.seed,
                                                        placement=spec.placement)
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
