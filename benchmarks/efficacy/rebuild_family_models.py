"""Rebuild chosen families' models of a generalization zoo exactly as the whole zoo drew them.

Usage:
    python benchmarks/efficacy/rebuild_family_models.py --base canary:clean --seed 12 --families object \
        --out DIR [--per-family 1]

``lab zoo --families F`` draws only F's recipes from the seed, so its models differ from the ones a zoo of
every family drew with that seed (each family's recipe takes its draws in turn). This draws the whole plan
(:func:`amdet_audit.lab.families.plan_families`, every family) and builds only the entries of ``--families``
into ``--out`` (resumable, with zoo.json): the models a recorded generalization run scanned, to be rescanned by
a later release. Floating-point rounding differs between machines, so a rebuild's success and fidelity come
within a few points of the recorded ones, not to the digit.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def plan_of(base_width: int, seed: int, families: list[str], per_family: int = 1) -> list:
    """The entries of ``families`` in the plan of every family drawn from ``seed``."""
    from amdet_audit.lab.families import plan_families

    return [e for e in plan_families(per_family, seed, base_width) if e.family in families]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="canary:clean")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--families", required=True, type=lambda s: s.split(","))
    parser.add_argument("--per-family", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from amdet_audit.lab.zoo import build_plan, load_base_width

    plan = plan_of(load_base_width(args.base, "cpu"), args.seed, args.families, args.per_family)
    if not plan:
        parser.error(f"no entry of {args.families} in the plan (known families: amdet_audit.lab.families)")
    manifest = build_plan(args.base, args.out, plan, seed=args.seed)
    for model in manifest["models"]:
        lab = model.get("lab") or {}
        print(f"{model['name']}: {model['status']} success {lab.get('success')} fidelity {lab.get('fidelity')}")


if __name__ == "__main__":
    main()
