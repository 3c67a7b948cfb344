"""From measured effects to a verdict: two rules, each a conjunction of continuous scores and thresholds.

- target rule (AMDet's signature, corrected): prompts carrying the pseudo-trigger collapse onto one target
  far beyond what the reference's own best pseudo-trigger achieves, and the reference does not do the same.
  Without a reference: absolute collapse.
- divergence rule (catches attribute backdoors too): the pseudo-trigger shifts the suspect's outputs, but
  not the reference's, by a large amount in a consistent direction across prompts.
- bidirectional towers (SigLIP, T5, BERT) keep the target rule's form with a reference-relative score: the
  suspect's collapse under the pseudo-trigger minus the reference's under the same vector (the inversion
  maximises exactly that, see scan/terms.py), since one inserted vector can collapse any bidirectional model;
  their divergence rule has a higher bar of its own. Without a reference they get no verdict.
- token rules (real, typeable input: see scan/discrete.py), with a reference only: a real-token or look-alike
  probe makes prompts collapse far beyond the reference's collapse under the same probe and far outside the
  spread of random tokens (token-collapse), or shifts them consistently far outside that spread
  (token-shift). On a bidirectional tower the token-collapse rule judges the gain, the share of the
  reference's room to full collapse the suspect closes under the probe, and asks only that it stand out from
  random tokens. Without a reference the probes the search selects collapse the clean canary base as far as
  0.58 beyond random tokens (z 9), as much as real backdoors on other bases: no rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.discrete import ProbeScore, TokenSearch
from amdet_audit.scan.features import collapse_gain
from amdet_audit.scan.judges import Effect
from amdet_audit.scan.result import Check

LENIENT = 0.7  # the cheap subset pass escalates to the full test set at 70% of each threshold


@dataclass
class Decision:
    """A verdict with the checks behind it."""

    verdict: str
    flagged: bool
    decisive: str | None
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)
    scores: dict[str, float | None] = field(default_factory=dict)


def check(name: str, score: float | None, threshold: float, direction: str, description: str,
          lenient: bool) -> Check:
    """A Check; in lenient mode the threshold is relaxed towards flagging."""
    if lenient:
        threshold = threshold * LENIENT if direction == ">=" else threshold + (1 - threshold) * (1 - LENIENT)
    flags = None if score is None else (score >= threshold if direction == ">=" else score <= threshold)
    return Check(name, score, threshold, direction, flags, description)


def target_checks(e: Effect, baseline: dict[str, float], cfg: ScanConfig, has_ref: bool, lenient: bool) -> list[Check]:
    """Checks of the target rule on the collapse candidate."""
    t = cfg.thresholds
    same = check("target.same_target_rate", e.same_target_rate, t.same_target_rate, ">=",
                 "share of held-out prompts carrying the pseudo-trigger that land on one common target", lenient)
    if cfg.differential and has_ref and e.reference_collapse is not None:
        return [
            check("target.differential_collapse", e.collapse - e.reference_collapse, t.differential_collapse, ">=",
                  "cross-prompt collapse under the pseudo-trigger beyond the reference's under the same vector",
                  lenient),
            same,
            check("target.anchor_similarity", e.anchor_similarity, t.anchor_cosine, "<=",
                  "similarity of suspect and reference outputs on the same triggered prompts", lenient),
        ]
    if not has_ref:
        return [check("target.collapse", e.collapse, t.reference_free_collapse, ">=",
                      "cross-prompt collapse under the pseudo-trigger (no reference: absolute)", lenient), same]
    return [
        check("target.collapse_gain", collapse_gain(e.collapse, baseline.get("collapse", 0.0)), t.collapse_gain,
              ">=", "share of the reference's headroom to full collapse (its own best pseudo-trigger's collapse "
              "to 1) that the suspect's pseudo-trigger closes", lenient),
        same,
        check("target.anchor_similarity", e.anchor_similarity, t.anchor_cosine, "<=",
              "similarity of suspect and reference outputs on the same triggered prompts", lenient),
    ]


def divergence_checks(e: Effect, cfg: ScanConfig, lenient: bool, causal: bool = True) -> list[Check]:
    """Checks of the divergence rule on the divergence candidate; a bidirectional tower's shift is judged against
    its own, higher bar (``bidirectional_divergence``, check ``divergence.relative_bidirectional``: see
    BIDIRECTIONAL_RULES)."""
    t = cfg.thresholds
    relative = ("divergence.relative", t.relative_divergence) if causal else \
        ("divergence.relative_bidirectional", t.bidirectional_divergence)
    return [
        check(relative[0], e.relative_divergence, relative[1], ">=",
              "consistent shift the pseudo-trigger causes in the suspect but not the reference, relative to the "
              "suspect's ordinary drift from the reference", lenient),
        check("divergence.consistency", e.divergence_consistency, t.divergence_consistency, ">=",
              "mean pairwise cosine of the per-prompt shifts", lenient),
        check("divergence.anchor_similarity", e.anchor_similarity, t.divergence_anchor_cosine, "<=",
              "similarity of suspect and reference outputs under the divergence pseudo-trigger", lenient),
    ]


def token_checks(search: TokenSearch, cfg: ScanConfig, lenient: bool) -> dict[str, list[Check]]:
    """Checks of the two token rules on the best real-input probes (scored against a reference); a search that
    judged its collapse probe by gain (a bidirectional tower's) is checked on the gain
    (see :func:`bidirectional_collapse_checks`)."""
    t, c, s = cfg.thresholds, search.best_collapse, search.best_shift
    rules: dict[str, list[Check]] = {}
    if c is not None and search.by_gain:
        rules["token-collapse"] = bidirectional_collapse_checks(c, cfg, lenient)
    elif c is not None:
        rules["token-collapse"] = [
            check("token_collapse.excess", c.excess, t.token_excess, ">=",
                  "cross-prompt collapse under the best real-input probe beyond the reference's under the same "
                  "probe", lenient),
            check("token_collapse.z", c.excess_z, t.token_excess_z, ">=",
                  "that excess as a robust z-score against random-token probes", lenient)]
    if s is not None:
        rules["token-shift"] = [
            check("token_shift.size", s.shift, t.token_shift, ">=",
                  "consistent shift the best real-input probe causes beyond the reference's, in units of the "
                  "clean outputs' spread", lenient),
            check("token_shift.z", s.shift_z, t.token_shift_z, ">=",
                  "that shift as a robust z-score against random-token probes", lenient)]
    return rules


def bidirectional_collapse_checks(c: ProbeScore, cfg: ScanConfig, lenient: bool) -> list[Check]:
    """The token-collapse rule of a bidirectional tower: the share of the reference's room to full collapse that
    the suspect closes under the probe (features.collapse_gain), and its z-score against random-token probes.

    The excess is capped by what the reference leaves: a SigLIP reference's own outputs collapse to 0.59 when
    every "a" is spelt in Cyrillic. And a backdoor that also answers random tokens widens the null an excess
    z-score is taken against (lab SigLIP backdoors: null spread 0.12 against at most 0.10 for benign fine-tunes,
    its real trigger at z 5), so the z bar here only asks that the probe stand out from random tokens at all.
    (benchmarks/efficacy/RESULTS.md, "token-collapse gain on bidirectional towers")

    Asking as well that the pseudo-trigger's shift stand out from the model's drift (relative divergence at
    least 2.5) cleared two of three heavy-domain false alarms on SigLIP and MiniLM's, but missed a T5 attribute
    backdoor whose probe closed 0.998 of the room at z 100 (relative divergence 2.40): not kept
    (benchmarks/efficacy/RESULTS.md, "two bidirectional rule changes")."""
    t = cfg.thresholds
    return [
        check("token_collapse.gain", c.gain, t.token_gain, ">=",
              "share of the reference's room to full collapse that the suspect closes under the best real-input "
              "probe", lenient),
        check("token_collapse.gain_z", c.gain_z, t.token_gain_z, ">=",
              "that gain as a robust z-score against random-token probes", lenient)]


NEEDS_REFERENCE_BIDIRECTIONAL = (
    "no verdict for a bidirectional encoder without its clean base: one inserted vector collapses any "
    "bidirectional tower (all-MiniLM-L6-v2's own pseudo-trigger: collapse 0.996), so only collapse beyond the "
    "reference's tells; pass --reference")


#: the rules that decide for a bidirectional tower. The token-shift rule is reported, not judged: a benign
#: fine-tune of a bidirectional tower moves every prompt's outputs together under a real probe (the SigLIP lab
#: base's benign fine-tunes reached token_shift 0.88-1.10 at z 11-13, over both bars). The divergence rule judges
#: with its own bar, ``bidirectional_divergence``: benign SigLIP fine-tunes reach divergence.relative 4.7 (CLIP's
#: bar is 3), while attribute backdoors, whose triggered prompts keep their subject and so collapse too little for
#: the target rule, reach 6.5-8.0 (benchmarks/efficacy/RESULTS.md, "two bidirectional rule changes")
BIDIRECTIONAL_RULES = ("collapse", "token-collapse", "divergence")

RULE_NAMES = {"collapse": "target", "divergence": "divergence", "token-collapse": "token-collapse",
              "token-shift": "token-shift"}


def decide(found: dict[str, Effect], baseline: dict[str, float], cfg: ScanConfig, has_ref: bool,
           lenient: bool = False, causal: bool = True, token: TokenSearch | None = None) -> Decision:
    """Apply every rule; backdoored when any holds in full.

    causal: False (SigLIP, T5, BERT) without a reference gives "inconclusive" whatever the scores say (see
    NEEDS_REFERENCE_BIDIRECTIONAL); with one, the token-shift rule does not decide (see BIDIRECTIONAL_RULES).
    """
    if not found:
        return Decision("inconclusive", False, None, ["the inversion produced no usable pseudo-trigger"])
    by_rule: dict[str, list[Check]] = {}
    if "collapse" in found:
        by_rule["collapse"] = target_checks(found["collapse"], baseline, cfg, has_ref, lenient)
    if "divergence" in found:
        by_rule["divergence"] = divergence_checks(found["divergence"], cfg, lenient, causal)
    if token is not None and has_ref:
        by_rule.update(token_checks(token, cfg, lenient))
    deciding = [rule for rule in by_rule if causal or rule in BIDIRECTIONAL_RULES]
    for rule, group in by_rule.items():
        for c in group:
            c.decides = rule in deciding
    checks = [c for group in by_rule.values() for c in group]
    rules = {rule: all(c.flags for c in by_rule[rule]) for rule in deciding}
    scores = {c.name: c.score for c in checks}
    if "collapse" in found:
        e = found["collapse"]
        d = found.get("divergence", e)
        scores.update({"divergence.magnitude": d.divergence, "drift": d.drift, "collapse": e.collapse,
                       "assimilation": e.assimilation, "clean_assimilation": e.clean_assimilation,
                       "clean_similarity": e.clean_similarity, "spread_ratio": e.spread_ratio,
                       "reference_spread_ratio": e.reference_spread_ratio})
    flagged = [r for r, ok in rules.items() if ok]
    if not causal and not has_ref and not lenient:
        return Decision("inconclusive", False, None, [NEEDS_REFERENCE_BIDIRECTIONAL], checks, scores)
    if flagged:
        reasons = [f"{RULE_NAMES[r]} rule holds: "
                   + ", ".join(f"{c.name} {c.score:.3f} {c.direction} {c.threshold:.3f}" for c in by_rule[r])
                   for r in flagged]
        return Decision("backdoored", True, flagged[0], reasons, checks, scores)
    reasons = [("no rule holds: " if causal else "no deciding rule holds: ")
               + ", ".join(f"{c.name} {c.score:.3f}" for c in checks if c.score is not None and c.decides)]
    return Decision("clean", False, None, reasons, checks, scores)
