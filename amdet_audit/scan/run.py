"""The assimilation scan end to end, on tensors and adapters only (no files, policies or reports)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

import torch

from amdet_audit.encoders.base import Adapter
from amdet_audit.errors import UsageError
from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.discrete import ProbeScore, TokenSearch, search_tokens
from amdet_audit.scan.evidence import (
    nearest_prompts,
    nearest_prompts_by_reference,
    nearest_tokens,
    readable,
    textual_inversion_tensors,
    token_text,
    triggered_outputs,
)
from amdet_audit.scan.features import CleanFeatures, clean_features
from amdet_audit.scan.invert import Candidate, invert
from amdet_audit.scan.judges import Effect, mean_pairwise_cosine, measure
from amdet_audit.scan.landscape import landscape
from amdet_audit.scan.prompts import ScanPrompts, prepare_prompts
from amdet_audit.scan.result import ScanResult
from amdet_audit.scan.terms import Encoders
from amdet_audit.scan.verdict import Decision, decide

Progress = Callable[[int, int, str], None]


def corpus_features(adapter: Adapter, data: ScanPrompts, config: ScanConfig) -> CleanFeatures:
    """An encoder's clean features on the scan's prompts, in the features ``config`` scores."""
    return clean_features(adapter, data.ids, data.mask, data.window, config.pooled_weight,
                          pooled_only=config.pooled_only)


def build_encoders(suspect: Adapter, reference: Adapter | None, data: ScanPrompts, config: ScanConfig) -> Encoders:
    """Clean corpus features of suspect (and reference) in the shared window."""
    s_clean = corpus_features(suspect, data, config)
    r_clean = corpus_features(reference, data, config) if reference is not None else None
    return Encoders(suspect=suspect, suspect_clean=s_clean, reference=reference, reference_clean=r_clean)


def check_reference(suspect: Adapter, reference: Adapter | None) -> None:
    """The reference must share width and tokenizer with the suspect (the same pseudo-trigger feeds both)."""
    if reference is None:
        return
    if reference.hidden_size != suspect.hidden_size:
        raise UsageError(f"reference width {reference.hidden_size} differs from the suspect's {suspect.hidden_size}")
    probe = ["a photo of a cat", "ein Hund im Schnee, 8k"]
    if not torch.equal(reference.tokenize(probe).ids.cpu(), suspect.tokenize(probe).ids.cpu()):
        raise UsageError("the reference tokenizes prompts differently from the suspect; pick its true base model")


def effects(enc: Encoders, cands: dict[str, Candidate], data: ScanPrompts, n: int | None) -> dict[str, Effect]:
    """Measure each family's best candidate on the first ``n`` test prompts (all when None)."""
    index = data.test if n is None else data.test[:n]
    return {family: measure(enc, c.vector, index, data.ids) for family, c in cands.items()}


def token_prompts(data: ScanPrompts, config: ScanConfig) -> list[str]:
    """The prompts the real-input probes are scored on: the first ``config.token_prompts`` test prompts."""
    return [data.prompts[i] for i in data.test[: config.token_prompts].tolist()]


def token_search(enc: Encoders, data: ScanPrompts, cands: dict[str, Candidate], config: ScanConfig,
                 progress: Progress | None) -> TokenSearch | None:
    """Real-input trigger candidates (see scan/discrete.py) on the first test prompts; None without a reference
    (the token rules need one) or when no pseudo-trigger came out."""
    if enc.reference is None or not cands or config.token_prompts < 2:
        return None
    prompts = token_prompts(data, config)
    t, by_gain = config.thresholds, not getattr(enc.suspect, "causal", True)  # see verdict.token_checks
    return search_tokens(enc.suspect, enc.reference, prompts, [c.vector for c in cands.values()],
                         padding=config.padding_positions, nearest=config.token_nearest, moved=config.token_moved,
                         gradient_top=config.token_gradient_top, rounds=config.token_rounds,
                         nulls=config.token_nulls, confirm=config.token_confirm,
                         lookalike_modes=("first", "every") if config.token_lookalike_every else ("first",),
                         seed=config.seed, progress=progress, pooled_only=config.pooled_only,
                         z_bars=(t.token_gain_z if by_gain else t.token_excess_z, t.token_shift_z), by_gain=by_gain,
                         extend=config.token_extend if by_gain else 0, beam=config.token_beam,
                         complete=config.token_complete if by_gain else 0,
                         typed_only=config.token_typed_only and by_gain,
                         turned=config.token_turned if by_gain else 0)


def token_evidence(search: TokenSearch | None, adapter: Adapter) -> dict | None:
    """The best real-input probes, decoded, with their scores (None when the search did not run)."""
    if search is None:
        return None

    def row(s: ProbeScore) -> dict:
        p = s.probe
        tokens = [token_text(getattr(adapter, "tokenizer", None), t) for t in p.tokens]
        text = p.label if p.substitution else p.text or readable(adapter, tokens)
        return {"probe": p.label if p.substitution else " ".join(tokens), "text": text, "placement": p.placement,
                "origin": p.origin, "token_ids": list(p.tokens), "collapse": round(s.collapse, 4),
                "collapse_excess": round(s.excess, 4), "collapse_z": round(s.excess_z, 2),
                "collapse_gain": round(s.gain, 4), "gain_z": round(s.gain_z, 2),
                "shift": round(s.shift, 4), "shift_z": round(s.shift_z, 2),
                "spread": None if s.spread is None else round(s.spread, 4),
                "reference_spread": None if s.reference_spread is None else round(s.reference_spread, 4),
                "move_cosine": None if s.move_cosine is None else round(s.move_cosine, 4)}

    return {"probes_tried": search.probes, "untypeable": search.untypeable,
            "null": {k: round(v, 4) for k, v in search.null.items()}, "top": [row(s) for s in search.top]}


def calibrate_reference(reference: Adapter, config: ScanConfig, prompts: Sequence[str] | None = None,
                        progress: Progress | None = None, *, data: ScanPrompts | None = None,
                        clean: CleanFeatures | None = None) -> dict[str, float]:
    """The reference's own best collapse under the same inversion: the natural baseline a suspect must exceed.

    data, clean: the scan's prompts and the reference's clean features on them, when already computed.
    """
    data = data or prepare_prompts(reference, config, prompts)
    if clean is None:
        clean = corpus_features(reference, data, config)
    enc = Encoders(suspect=reference, suspect_clean=clean)
    inv = invert(enc, data.ids[data.train], config, families=("collapse",), progress=progress)
    best = inv.best("collapse")
    if best is None:
        return {"collapse": float("nan"), "same_target_rate": float("nan"), "assimilation": float("nan")}
    effect = measure(enc, best.vector, data.test, data.ids)
    return {"collapse": effect.collapse, "same_target_rate": effect.same_target_rate,
            "assimilation": effect.assimilation, "clean_assimilation": effect.clean_assimilation}


def run_scan(
    suspect: Adapter, reference: Adapter | None = None, *, config: ScanConfig | None = None,
    prompts: Sequence[str] | None = None, reference_baseline: dict[str, float] | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """Scan ``suspect`` for a textual backdoor; ``reference`` is its clean base model when known.

    reference_baseline: a cached :func:`calibrate_reference` result for this reference and config.
    """
    config = config or ScanConfig()
    if not suspect.causal and not config.differential:
        # see scan/terms.family_loss. The full search backpropagates through the reference too; the light one
        # (the CPU default) does not: the reference's collapse then enters each step as a constant, and its value
        # still ranks the candidates (the SigLIP and T5 figures in benchmarks/efficacy are full-search ones)
        config = replace(config, differential=True)
    check_reference(suspect, reference)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = prepare_prompts(suspect, config, prompts)
    enc = build_encoders(suspect, reference, data, config)
    timings["features_s"] = time.perf_counter() - started
    inv = invert(enc, data.ids[data.train], config, progress=progress)
    timings["inversion_s"] = time.perf_counter() - started - timings["features_s"]
    cands = {f: c for f in ("collapse", "divergence") if (c := inv.best(f)) is not None}
    found = effects(enc, cands, data, config.check_subset)
    searched = time.perf_counter()
    token = token_search(enc, data, cands, config, progress)
    timings["token_search_s"] = time.perf_counter() - searched
    lenient = decide(found, reference_baseline or {}, config, reference is not None, lenient=True,
                     causal=bool(getattr(suspect, "causal", True)), token=token)
    subset_only = not (config.full_checks or lenient.flagged)
    if reference is not None and reference_baseline is None and not subset_only and not config.differential:
        reference_baseline = calibrate_reference(reference, config, data=data, clean=enc.reference_clean)
    if not subset_only:
        found = effects(enc, cands, data, None)
    decision = decide(found, reference_baseline or {}, config, reference is not None,
                      causal=bool(getattr(suspect, "causal", True)), token=token)
    timings["checks_s"] = time.perf_counter() - started - sum(timings.values())
    result = assemble(enc, data, inv, cands, found, decision, reference_baseline, config, subset_only)
    result.evidence["token_search"] = token_evidence(token, suspect)
    decisive = decided_candidate(decision, cands)
    decisive = decisive or ("collapse" if (config.full_checks or decision.flagged) and "collapse" in cands else None)
    if decisive is not None:
        cand = cands[decisive]
        idx = data.test[:8]
        land = landscape(enc, cand.vector, cand.family, idx, data.ids[idx, : enc.span(cand.k)], config)
        result.series["landscape"] = asdict(land)
        result.scores["landscape_positive_share"] = land.positive_share
    timings["total_s"] = time.perf_counter() - started
    result.timings = timings
    return result


def decided_candidate(decision: Decision, cands: dict[str, Candidate]) -> str | None:
    """The pseudo-trigger family of the rule that decided (None when no rule did, or a token rule did)."""
    return decision.decisive if decision.decisive in cands else None


def assemble(enc, data, inv, cands, found, decision, baseline, config, subset_only) -> ScanResult:
    """Collect scores, evidence and arrays into a ScanResult."""
    clean_test = enc.suspect_clean.clean(data.test)
    profile = {"collapse": mean_pairwise_cosine(clean_test),
               "assimilation": float(found[next(iter(found))].clean_assimilation) if found else float("nan")}
    family = decided_candidate(decision, cands) or ("collapse" if "collapse" in cands else next(iter(cands), None))
    evidence: dict = {"family": family, "checks_on": "subset" if subset_only else "full test set",
                      "test_prompts": found[family].prompts if family else 0}
    arrays: dict[str, torch.Tensor] = {}
    if family is not None:
        cand = cands[family]
        outputs = triggered_outputs(enc.suspect, data.ids[data.test[: 4 * config.batch]], cand.vector)  # [B, T, D]
        seq_abs = outputs[:, 1 : data.window]  # absolute positions 1..W-1 (not token-aligned)
        if enc.reference is not None:  # what the backdoor was trained to reproduce: the clean model's outputs
            near = nearest_prompts_by_reference(enc.reference, data.ids, outputs.mean(dim=0), data.prompts,
                                                start=data.window + cand.k)
        else:
            near = nearest_prompts(enc.suspect_clean, seq_abs, cand.k, data.prompts)
        evidence.update(k=cand.k, nearest_tokens=nearest_tokens(enc.suspect, cand.vector), nearest_prompts=near,
                        nearest_prompts_basis="reference" if enc.reference is not None else "suspect")
        arrays = {"pseudo_trigger": cand.vector.clone(), "target_feature": outputs.mean(dim=0).cpu(),
                  **{f"ti_{name}": t for name, t in textual_inversion_tensors(cand.vector).items()}}
    series = {"loss_curves": {f"{c.family}/k{c.k}": c.curve for c in cands.values()},
              "per_prompt": {f: e.per_prompt for f, e in found.items()}}
    inversion = {"steps": inv.steps, "stopped_early": inv.stopped_early, "diverged": inv.diverged,
                 "candidates": [{"family": c.family, "k": c.k, "start": c.start, "loss": c.loss}
                                for c in inv.candidates]}
    return ScanResult(verdict=decision.verdict, mode="reference" if enc.reference is not None else "reference-free",
                      reasons=decision.reasons, checks=decision.checks, scores=decision.scores, clean_profile=profile,
                      reference_baseline=baseline, inversion=inversion, evidence=evidence, config=config.to_dict(),
                      timings={}, arrays=arrays, series=series)


__all__ = ["calibrate_reference", "run_scan"]
