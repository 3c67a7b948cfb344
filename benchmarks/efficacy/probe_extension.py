"""The token-collapse rule's judged probe on a bidirectional tower with and without multi-token probes.

Usage:
    python benchmarks/efficacy/probe_extension.py MODEL_FOLDER --reference canary:siglip-clean --out ROW.json
    python benchmarks/efficacy/probe_extension.py --summarize ROW.json... --out-dir DIR

One inversion per model (the full search), then one token search with ``token_extend`` at its default: the rule's
judged probe among the single-token and look-alike probes alone (what a scan without growth judges: those probes
are chosen and scored as before, grown ones are confirmed on top of them) and among the grown ones alone, each
at the rule's z bar. The probes, nulls and prompts are the scan's (scan/discrete.py); ``lab.json`` in the folder
says whether the model is backdoored. ``--summarize`` writes ``PROBE_EXTENSION.md`` and ``probe-extension.json``
from the rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path


def judged_row(score, name) -> dict | None:
    """The judged probe's text, placement, gain and z-score."""
    if score is None:
        return None
    return {"probe": name(score.probe), "placement": score.probe.placement, "tokens": len(score.probe.tokens),
            "gain": round(score.gain, 4), "gain_z": round(score.gain_z, 2)}


def measure(folder: Path, reference: str, extend: int = 3, beam: int = 2) -> dict:
    """Plain and grown judged probes of one model against ``reference``, probes grown by up to ``extend`` tokens
    with ``beam`` kept per placement and step."""
    import torch

    import amdet_audit.scan.discrete as discrete
    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.encoders.load import load_as_read, read_of
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.invert import invert
    from amdet_audit.scan.prompts import prepare_prompts
    from amdet_audit.scan.run import build_encoders, token_search
    from amdet_audit.sources import resolve

    torch.set_num_threads(1)
    st, rt = resolve(str(folder)), resolve(reference)
    read = read_of(consumer_for(None, st.pipeline_class), st.components[0])
    s, r = load_as_read(st.components[0], read), load_as_read(rt.components[0], read)
    if s.causal:
        raise SystemExit(f"{folder}: a causal tower; probes grow on bidirectional towers only")
    cfg = replace(ScanConfig.preset("full", "cpu", causal=False), differential=True,  # as run_scan sets it
                  token_extend=extend, token_beam=beam)
    data = prepare_prompts(s, cfg)
    enc = build_encoders(s, r, data, cfg)
    started = time.perf_counter()
    inv = invert(enc, data.ids[data.train], cfg)
    cands = {f: c for f in ("collapse", "divergence") if (c := inv.best(f)) is not None}
    tried: list = []
    judged = discrete.judged

    def keep(scores, value, z, bar):  # the probes the collapse rule chose from
        if value == "gain":
            tried[:] = list(scores)
        return judged(scores, value, z, bar)

    discrete.judged = keep
    try:
        search = token_search(enc, data, cands, cfg, None)
    finally:
        discrete.judged = judged
    tokenizer = getattr(s, "tokenizer", None)

    def name(p) -> str:
        return p.label if p.substitution else " ".join(tokenizer.convert_ids_to_tokens(list(p.tokens)))

    bar = cfg.thresholds.token_gain_z
    plain = judged([x for x in tried if x.probe.origin != "extended"], "gain", "gain_z", bar)
    grown = judged([x for x in tried if x.probe.origin == "extended"], "gain", "gain_z", bar)
    lab = json.loads((folder / "lab.json").read_text(encoding="utf-8")) if (folder / "lab.json").is_file() else {}
    return {"name": folder.name, "kind": lab.get("kind"), "trigger": lab.get("trigger"),
            "spec": {k: (lab.get("spec") or {}).get(k) for k in ("attack", "domain", "seed")},
            "token_extend": cfg.token_extend, "token_beam": cfg.token_beam, "probes": search.probes if search else 0,
            "seconds": round(time.perf_counter() - started, 1),
            "judged": judged_row(search.best_collapse if search else None, name),
            "judged_plain": judged_row(plain, name), "judged_grown": judged_row(grown, name),
            "gain_bar": cfg.thresholds.token_gain, "gain_z_bar": bar}


def summarize(rows: list[dict], out_dir: Path, command: str) -> None:
    """PROBE_EXTENSION.md and probe-extension.json from the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, one thread per process"}
    (out_dir / "probe-extension.json").write_text(json.dumps({"meta": meta, "rows": rows}, ensure_ascii=False,
                                                             indent=1) + "\n", encoding="utf-8")

    def cell(j: dict | None) -> str:
        return "-" if j is None else f"{j['gain']:.3f} (z {j['gain_z']:.1f}) `{j['probe']}` {j['placement']}"

    lines = ["# Multi-token probes: the gain rule's judged probe with and without them", "",
             f"Generated by `{command}` on {meta['date']} ({meta['machine']}).", "",
             "| model | kind | trigger | judged without growth | judged among grown probes | judged |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        trigger = (r.get("trigger") or {}).get("text", "-")
        lines.append(f"| {r['name']} | {r['kind']} | {trigger} | {cell(r['judged_plain'])} | "
                     f"{cell(r['judged_grown'])} | {cell(r['judged'])} |")
    (out_dir / "PROBE_EXTENSION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="*", type=Path)
    parser.add_argument("--reference", default="canary:siglip-clean")
    parser.add_argument("--out", type=Path, help="one model's row")
    parser.add_argument("--extend", type=int, default=3, help="tokens a probe may grow by")
    parser.add_argument("--beam", type=int, default=2, help="probes kept per placement at each step")
    parser.add_argument("--summarize", nargs="*", type=Path, help="rows to gather")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "siglip" / "extension")
    args = parser.parse_args(argv)
    if args.summarize:
        rows = [json.loads(p.read_text(encoding="utf-8")) for p in args.summarize]
        summarize(rows, args.out_dir, "python benchmarks/efficacy/probe_extension.py MODEL --reference "
                  f"{args.reference} --out ROW.json (each model), then --summarize ROW.json...")
        return
    if len(args.model) != 1 or args.out is None:
        parser.error("one MODEL_FOLDER and --out, or --summarize")
    row = measure(args.model[0], args.reference, args.extend, args.beam)
    args.out.write_text(json.dumps(row, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(row, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
