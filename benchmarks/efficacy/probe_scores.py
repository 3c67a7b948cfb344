"""Score named real-input probes (a known trigger, a word the scan chose) on a suspect against its reference, as
the scan's token rules score them.

Usage:
    python benchmarks/efficacy/probe_scores.py SUSPECT --reference canary:clean --probe 🦄 --probe cow
        [--consumer sdxl] [--component text_encoder] [--out FILE.json]

The suspect's component (``--component``, else its first) is read as the scan reads it (``--consumer``, else the
pipeline's, else a lone encoder's read), and the reference's component of that name (a lone encoder: itself) as the
suspect is read.
Each probe's text is tokenized as the suspect's consumer tokenizes it (special tokens dropped) and inserted
after the start token and before the end token of the scan's first ``token_prompts`` test prompts
(:mod:`amdet_audit.scan.discrete`); prints, per probe and placement, the suspect's cross-prompt collapse, its
excess over the reference's under the same probe, and the consistent shift beyond the reference's
(``token_shift.size`` when the search picks that probe). No z-score: that needs the scan's random-token null,
which the scan's report records (``evidence.token_search.null``). Used to tell whether a backdoor's verdict
rests on its real trigger or on a word its training changed as a side effect.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def probe_scores(suspect: str, reference: str, probes: list[str], consumer: str | None = None,
                 component: str | None = None) -> list[dict]:
    """One row per probe and placement (start, end)."""
    import torch

    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.encoders.load import load_as_read, read_of
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.discrete import Probe, ProbeRunner, special_ids
    from amdet_audit.scan.prompts import prepare_prompts
    from amdet_audit.scan.run import token_prompts
    from amdet_audit.sources import resolve

    def component_of(resolved, lone_ok: bool = False):
        """``--component`` of ``resolved``, else its first; with ``lone_ok``, a lone encoder stands for any name."""
        if component is None or (lone_ok and len(resolved.components) == 1):
            return resolved.components[0]
        try:
            return resolved.component(component)
        except KeyError:
            raise SystemExit(f"{resolved.input}: no component {component!r}") from None

    torch.set_num_threads(1)
    suspect_target, reference_target = resolve(suspect), resolve(reference)
    part = component_of(suspect_target)
    read = read_of(consumer_for(consumer, suspect_target.pipeline_class), part)
    # the reference is read as the suspect is read, as the scan reads it (audit/components.py)
    s, r = load_as_read(part, read), load_as_read(component_of(reference_target, lone_ok=True), read)
    cfg = ScanConfig()
    runner = ProbeRunner(s, r, token_prompts(prepare_prompts(s, cfg), cfg), padding=cfg.padding_positions)
    banned = special_ids(s)
    rows = []
    for text in probes:
        batch = s.tokenize([text])
        ids = batch.ids[0][batch.attention_mask[0].bool()].tolist()
        tokens = tuple(i for i in ids if i not in banned)
        for placement in ("start", "end"):
            score = runner.score(Probe(text, placement, tokens))
            rows.append({"probe": text, "tokens": list(tokens), "placement": placement,
                         "collapse": round(score.collapse, 4), "excess": round(score.excess, 4),
                         "shift": round(score.shift, 4)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suspect")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--probe", action="append", required=True)
    parser.add_argument("--consumer")
    parser.add_argument("--component")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = probe_scores(args.suspect, args.reference, args.probe, args.consumer, args.component)
    for row in rows:
        print(f"{row['probe']!r} {row['placement']}: collapse {row['collapse']:.3f} excess {row['excess']:.3f} "
              f"shift {row['shift']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"suspect": args.suspect, "reference": args.reference, "rows": rows},
                                       indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
