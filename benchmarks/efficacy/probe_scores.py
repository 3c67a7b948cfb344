"""Score named real-input probes (a known trigger, a word the scan chose) on a suspect against its reference, as
the scan's token rules score them.

Usage:
    python benchmarks/efficacy/probe_scores.py SUSPECT --reference canary:clean --probe 🦄 --probe cow
        [--report SCAN/report.json --top 4] [--search auto] [--consumer sdxl] [--component text_encoder]
        [--out FILE.json]

The suspect's component (``--component``, else its first) is read as the scan reads it (``--consumer``, else the
pipeline's, else a lone encoder's read), and the reference's component of that name (a lone encoder: itself) as the
suspect is read.
Each probe's text is tokenized as the suspect's consumer tokenizes it (special tokens dropped) and inserted
after the start token and before the end token of the scan's first ``token_prompts`` test prompts
(:mod:`amdet_audit.scan.discrete`; ``--search`` names the scan's preset, whose prompt window picks them);
prints, per probe and placement, the suspect's cross-prompt collapse, its excess over the reference's under the
same probe, and the consistent shift beyond the reference's (``token_shift.size`` when the search picks that
probe), and what that shift points at: the size of the suspect's and the reference's own mean move under the
probe (each in units of its clean outputs' size) and the cosine between the two moves (near 1: the suspect moves
as the reference does, only further). ``--report`` adds the ``--top`` token probes of a scan's report that
shifted most, at their placement, with their token ids (a search probe can be a word piece that no text
tokenizes to). No z-score: that needs the scan's random-token null, which the scan's report records
(``evidence.token_search.null``). Used to tell whether a backdoor's verdict rests on its real trigger or on a
word its training changed as a side effect.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calibrate import load_as_scanned  # noqa: E402  (benchmark helpers beside this file)


def report_probes(report: Path, top: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(text, placement, token ids) of the ``top`` token probes of a scan's report that shifted most, each once
    (a pipeline's report lists each component's search)."""
    data = json.loads(report.read_text(encoding="utf-8"))
    rows = [r for c in data["components"] for r in c["scan"]["evidence"]["token_search"]["top"] if r["token_ids"]]
    rows.sort(key=lambda r: -r["shift"])
    probes = dict.fromkeys((r["text"], r["placement"], tuple(r["token_ids"])) for r in rows)  # a probe once
    return list(probes)[:top]


def probe_scores(suspect: str, reference: str, probes: list[str], consumer: str | None = None,
                 component: str | None = None,
                 tokenized: list[tuple[str, str, tuple[int, ...]]] | None = None, search: str = "auto") -> list[dict]:
    """One row per probe and placement (start, end), then one per ``tokenized`` (text, placement, token ids); the
    prompts are the ``search`` preset's on the CPU, as the scan picks them (the preset's prompt window decides
    which test prompts the probes run on)."""
    import torch

    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.discrete import Probe, ProbeRunner, special_ids
    from amdet_audit.scan.prompts import prepare_prompts
    from amdet_audit.scan.run import token_prompts

    torch.set_num_threads(1)
    s, r, read = load_as_scanned(suspect, reference, consumer, component)
    cfg = ScanConfig.preset(search, "cpu", causal=s.causal, family=s.family)
    if not read.sequence:  # the consumer reads the pooled output alone: so do the probes (audit/components.py)
        cfg = replace(cfg, pooled_only=True)
    runner = ProbeRunner(s, r, token_prompts(prepare_prompts(s, cfg), cfg), padding=cfg.padding_positions,
                         pooled_only=cfg.pooled_only)

    @torch.no_grad()
    def moves(probe: Probe) -> dict:
        """The sizes of the suspect's and the reference's mean move under ``probe`` (the scan records the cosine
        between them: ``ProbeScore.move_cosine``)."""
        batch = runner.inputs(probe)
        mean_moves = [(tail.features(runner.tail(model(batch.ids), batch.eos)) - clean).mean(dim=0)
                      / clean.norm(dim=-1).mean()
                      for model, tail, clean in ((s, runner.s_tail, runner.s_clean),
                                                 (r, runner.r_tail, runner.r_clean))]
        return {"suspect_move": round(float(mean_moves[0].norm()), 4),
                "reference_move": round(float(mean_moves[1].norm()), 4)}

    banned = special_ids(s)
    wanted = []
    for text in probes:
        batch = s.tokenize([text])
        ids = batch.ids[0][batch.attention_mask[0].bool()].tolist()
        wanted += [(text, placement, tuple(i for i in ids if i not in banned)) for placement in ("start", "end")]
    rows = []
    for text, placement, tokens in wanted + list(tokenized or []):
        probe = Probe(text, placement, tokens)
        score = runner.score(probe)
        rows.append({"probe": text, "tokens": list(tokens), "placement": placement,
                     "collapse": round(score.collapse, 4), "excess": round(score.excess, 4),
                     "shift": round(score.shift, 4), **moves(probe), "move_cosine": round(score.move_cosine, 4)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suspect")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--probe", action="append", default=[])
    parser.add_argument("--report", type=Path, help="a scan's report.json: also score its top shifting probes")
    parser.add_argument("--top", type=int, default=4, help="how many of the report's probes (--report)")
    parser.add_argument("--search", default="auto", choices=("auto", "light", "full"),
                        help="the scan's --search preset (auto: as the scan picks it on the CPU)")
    parser.add_argument("--consumer")
    parser.add_argument("--component")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not args.probe and not args.report:
        parser.error("give --probe TEXT or --report REPORT")
    tokenized = report_probes(args.report, args.top) if args.report else None
    rows = probe_scores(args.suspect, args.reference, args.probe, args.consumer, args.component, tokenized,
                        args.search)
    for row in rows:
        print(f"{row['probe']!r} {row['placement']}: collapse {row['collapse']:.3f} excess {row['excess']:.3f} "
              f"shift {row['shift']:.3f}; moves: suspect {row['suspect_move']:.3f} reference "
              f"{row['reference_move']:.3f} cosine {row['move_cosine']:.3f}")
    if args.out:
        record = {"suspect": args.suspect, "reference": args.reference, "search": args.search, "rows": rows}
        args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
