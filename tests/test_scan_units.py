"""Pure tensor pieces of the scan."""

from __future__ import annotations

import torch

from amdet_audit.report.model import redact_argv
from amdet_audit.scan.features import collapse
from amdet_audit.scan.invert import capped, plateaued
from amdet_audit.scan.judges import mean_pairwise_cosine
from amdet_audit.scan.landscape import hessian_eigenvalues
from amdet_audit.scan.verdict import check


def test_collapse_of_identical_and_opposite_features() -> None:
    same = torch.ones(1, 4, 6)
    assert torch.allclose(collapse(same), torch.tensor([1.0]))
    pair = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert torch.allclose(collapse(pair), torch.tensor([-1.0]))
    assert abs(mean_pairwise_cosine(torch.eye(5)) - 0.0) < 1e-6


def test_spread_ratio_tells_a_common_shift_from_a_collapse() -> None:
    """A common shift far larger than the prompts' spread raises cross-prompt cosine to ~1 but keeps every
    prompt's identity (spread ratio 1); landing on one target erases it (0)."""
    from amdet_audit.scan.features import spread_ratio

    clean = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    shifted = clean + 100.0 * torch.ones(16)
    assert collapse(shifted.unsqueeze(0))[0] > 0.99 and abs(spread_ratio(shifted, clean) - 1.0) < 1e-4
    target = torch.randn(16).expand(32, 16) + 1e-3 * clean
    assert spread_ratio(target, clean) < 0.01
    assert abs(spread_ratio(0.5 * clean, clean) - 0.5) < 1e-5


def test_hessian_of_a_bowl_is_positive_and_of_a_saddle_mixed() -> None:
    coords = torch.linspace(-1, 1, 9)
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    h = float(coords[1] - coords[0])
    bowl = hessian_eigenvalues(a**2 + 2 * b**2, h)
    assert bool((bowl > 0).all()) and torch.allclose(bowl.sort().values[:2], torch.tensor([2.0, 2.0]), atol=1e-4)
    saddle = hessian_eigenvalues(a**2 - b**2, h)
    assert float((saddle > 0).float().mean()) == 0.5


def test_capped_keeps_vectors_within_radius() -> None:
    u = torch.tensor([[[3.0, 4.0]], [[0.3, 0.4]]])
    v = capped(u, radius=2.0)
    assert torch.allclose(v.norm(dim=-1), torch.tensor([[2.0], [1.0]]))


def test_plateau_detection() -> None:
    assert not plateaued([5.0 - i for i in range(40)], window=10, tolerance=1e-3)
    assert plateaued([1.0] * 40, window=10, tolerance=1e-3)


def test_lenient_thresholds_lean_towards_flagging() -> None:
    strict = check("x", 0.5, 0.6, ">=", "", lenient=False)
    lenient = check("x", 0.5, 0.6, ">=", "", lenient=True)
    assert not strict.flags and lenient.flags
    assert check("y", 0.6, 0.5, "<=", "", lenient=True).flags


def test_secrets_are_redacted() -> None:
    assert redact_argv(["scan", "--hf-token", "abc", "--api-key=xyz", "x"]) == [
        "scan", "--hf-token", "***", "--api-key=***", "x"]


def test_bidirectional_rules_are_reference_relative() -> None:
    """A bidirectional tower: no verdict without a reference; with one, the target rule judges the collapse beyond
    the reference's under the same vector, and the divergence rule judges against its own, higher bar."""
    from dataclasses import replace

    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.judges import Effect
    from amdet_audit.scan.verdict import BIDIRECTIONAL_RULES, decide

    def effect(reference_collapse: float, divergence: float = 0.0) -> Effect:
        return Effect(prompts=64, collapse=0.99, same_target_rate=1.0, assimilation=0.98, clean_assimilation=0.4,
                      clean_similarity=0.1, anchor_similarity=0.1, reference_collapse=reference_collapse,
                      relative_divergence=divergence, divergence_consistency=0.9, divergence=1.0, drift=0.1)

    cfg = replace(ScanConfig(), differential=True)
    alone = decide({"collapse": effect(0.2)}, {}, cfg, has_ref=False, causal=False)
    assert alone.verdict == "inconclusive" and "bidirectional" in alone.reasons[0] and alone.checks
    both_collapse = decide({"collapse": effect(0.97)}, {}, cfg, has_ref=True, causal=False)
    assert both_collapse.verdict == "clean"  # any bidirectional tower collapses under one strong vector
    only_suspect = decide({"collapse": effect(0.2)}, {}, cfg, has_ref=True, causal=False)
    assert only_suspect.verdict == "backdoored" and only_suspect.decisive == "collapse"
    assert only_suspect.scores["target.differential_collapse"] == 0.99 - 0.2
    # the divergence rule judges a bidirectional tower against its own, higher bar: a shift over CLIP's bar (3) but
    # under the bidirectional one (bidirectional_divergence) is what benign SigLIP fine-tunes show
    bar = cfg.thresholds.bidirectional_divergence
    assert bar > cfg.thresholds.relative_divergence
    moderate = decide({"collapse": effect(0.97, bar - 1.0), "divergence": effect(0.97, bar - 1.0)}, {}, cfg,
                      has_ref=True, causal=False)
    assert moderate.verdict == "clean"
    assert moderate.scores["divergence.relative_bidirectional"] == bar - 1.0
    diverging = decide({"collapse": effect(0.97, 50.0), "divergence": effect(0.97, 50.0)}, {}, cfg, has_ref=True,
                       causal=False)
    assert diverging.verdict == "backdoored" and diverging.decisive == "divergence"
    assert "divergence.relative" not in diverging.scores  # the CLIP bar's check is not made
    assert BIDIRECTIONAL_RULES == ("collapse", "token-collapse", "divergence")  # token-shift is reported only
    # ... and every reader of report.json says which rules decide and which are reported only
    from dataclasses import asdict

    from amdet_audit.report.markdown import rule_groups
    from amdet_audit.scan.discrete import Probe, ProbeScore, TokenSearch
    shifting = ProbeScore(Probe("t", "end", tokens=(5,)), collapse=0.1, excess=0.0, shift=2.0, gain=0.0,
                          shift_z=20.0)  # a real probe that shifts every prompt far: what benign fine-tunes show
    token = TokenSearch(best_collapse=shifting, best_shift=shifting, probes=1, by_gain=True)
    shifted = decide({"collapse": effect(0.97, bar - 1.0), "divergence": effect(0.97, bar - 1.0)}, {}, cfg,
                     has_ref=True, causal=False, token=token)
    assert shifted.verdict == "clean"  # the token-shift rule holds but does not decide
    assert all(not c.decides for c in shifted.checks if c.name.startswith("token_shift."))
    groups = {g["rule"]: g for g in rule_groups([asdict(c) for c in shifted.checks])}
    assert not groups["token-shift"]["decides"] and not groups["token-shift"]["fired"]
    assert groups["token-shift"]["state"] == "held, reported only"
    assert groups["divergence"]["decides"] and groups["divergence"]["state"] == "not fired"
    assert groups["target"]["decides"] and groups["target"]["state"] == "not fired"
    assert {g["rule"]: g["state"] for g in rule_groups([asdict(c) for c in diverging.checks])}["divergence"] == "fired"
    causal = decide({"collapse": effect(0.97, 50.0), "divergence": effect(0.97, 50.0)}, {}, cfg, has_ref=True)
    assert causal.verdict == "backdoored" and all(c.decides for c in causal.checks)
    assert {g["rule"]: g["state"] for g in rule_groups([asdict(c) for c in causal.checks])}["divergence"] == "fired"


def test_collapse_gain_is_measured_against_the_reference_room() -> None:
    """The same triggered collapse counts for more when the reference's own best leaves less room below 1."""
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.features import HEADROOM_FLOOR, collapse_gain
    from amdet_audit.scan.judges import Effect
    from amdet_audit.scan.verdict import decide

    assert abs(collapse_gain(0.95, 0.81) - 0.14 / 0.19) < 1e-9  # a raw excess of 0.14 closes 74% of the room
    assert abs(collapse_gain(0.95, 0.57) - 0.38 / 0.43) < 1e-9
    assert collapse_gain(0.57, 0.57) == 0.0 and collapse_gain(0.5, 0.57) < 0
    assert abs(collapse_gain(1.0, 0.999) - 0.001 / HEADROOM_FLOOR) < 1e-9  # the room is floored
    effect = Effect(prompts=64, collapse=0.95, same_target_rate=1.0, assimilation=0.9, clean_assimilation=0.4,
                    clean_similarity=0.1, anchor_similarity=0.05)
    decision = decide({"collapse": effect}, {"collapse": 0.81}, ScanConfig(), has_ref=True)
    assert decision.verdict == "backdoored" and decision.scores["target.collapse_gain"] > 0.7
    tame = Effect(prompts=64, collapse=0.85, same_target_rate=1.0, assimilation=0.9, clean_assimilation=0.4,
                  clean_similarity=0.1, anchor_similarity=0.05)
    assert decide({"collapse": tame}, {"collapse": 0.81}, ScanConfig(), has_ref=True).verdict == "clean"


def test_token_shift_rule_needs_a_large_shift_not_only_a_large_z_score() -> None:
    """A z-score against a tight null (a near-identical model pair: spread at its floor) is large for any small
    shift; the rule also asks the shift itself to be large (a random tower pair once flagged on z alone)."""
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.discrete import Probe, ProbeScore, TokenSearch
    from amdet_audit.scan.verdict import token_checks

    def rule(shift: float, shift_z: float) -> bool:
        best = ProbeScore(Probe("t", "end", tokens=(5,)), collapse=0.3, excess=0.0, shift=shift, shift_z=shift_z)
        checks = token_checks(TokenSearch(best_collapse=best, best_shift=best, probes=1), ScanConfig(), False)
        return all(c.flags for c in checks["token-shift"])

    cfg = ScanConfig().thresholds
    assert not rule(shift=0.15, shift_z=13.0)  # tight null, small shift
    assert not rule(shift=1.0, shift_z=cfg.token_shift_z - 1)  # large shift, but ordinary for this model pair
    assert rule(shift=1.0, shift_z=cfg.token_shift_z + 1)


def test_a_bidirectional_token_collapse_rule_judges_the_share_of_the_room_the_reference_leaves() -> None:
    """On a bidirectional tower the token-collapse rule reads the gain: a probe under which the reference itself
    collapses (0.59) leaves a backdoor an excess of at most 0.41, below the excess bar, but a gain near 1; a
    causal tower keeps the excess rule. A gain random tokens explain (z below its bar) does not flag."""
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.discrete import Probe, ProbeScore, TokenSearch
    from amdet_audit.scan.features import collapse_gain
    from amdet_audit.scan.verdict import token_checks

    cfg = ScanConfig()
    t = cfg.thresholds

    def flags(gain_z: float, causal: bool, excess_z: float = 30.0) -> bool:
        best = ProbeScore(Probe("a->а every", "text", substitution=("a", "а", "every")), collapse=0.9,
                          excess=0.31, shift=0.0, gain=collapse_gain(0.9, 0.59), excess_z=excess_z, gain_z=gain_z)
        search = TokenSearch(best_collapse=best, best_shift=None, probes=1, by_gain=not causal)
        checks = token_checks(search, cfg, False)
        return all(c.flags for c in checks["token-collapse"])

    assert collapse_gain(0.9, 0.59) > t.token_gain and 0.31 < t.token_excess
    assert flags(gain_z=t.token_gain_z + 1, causal=False)
    assert not flags(gain_z=t.token_gain_z - 1, causal=False)  # random tokens collapse this model as far
    assert not flags(gain_z=t.token_gain_z + 1, causal=True)  # a causal tower: the excess rule, 0.31 is too small
    assert "token-collapse" not in token_checks(TokenSearch(None, None, 1, by_gain=True), cfg, False)  # no probe


def test_a_scan_depends_on_its_seed_only_not_on_the_global_random_state(tiny_clip) -> None:
    """Every random draw of a scan comes from generators seeded by ScanConfig.seed; the caller's RNG is left
    alone."""
    import torch

    from amdet_audit.encoders import load_component
    from amdet_audit.scan.config import ScanConfig
    from amdet_audit.scan.run import run_scan
    from amdet_audit.sources import resolve

    model = load_component(resolve(str(tiny_clip)).components[0], device="cpu")
    cfg = ScanConfig(prompts=60, steps=6, min_steps=2, batch=4, token_prompts=4, token_nulls=2, token_confirm=2,
                     token_nearest=1, token_moved=1, token_gradient_top=1, token_rounds=1, landscape_points=3)
    scores, after = [], []
    for state in (1, 2):
        torch.manual_seed(state)
        scores.append({c.name: c.score for c in run_scan(model, config=cfg).checks})
        after.append(torch.rand(1).item())  # the global stream continues where the caller left it
    assert scores[0] == scores[1]
    untouched = []
    for state in (1, 2):
        torch.manual_seed(state)
        untouched.append(torch.rand(1).item())
    assert after == untouched


def test_the_search_seed_is_the_explicit_one_else_the_configs() -> None:
    from amdet_audit.api import ScanOptions
    from amdet_audit.scan.config import DEFAULT_SEED, ScanConfig

    assert ScanOptions().search_seed == DEFAULT_SEED
    assert ScanOptions(config=ScanConfig(seed=7)).search_seed == 7  # a config's own seed is kept
    assert ScanOptions(seed=3, config=ScanConfig(seed=7)).search_seed == 3  # an explicit seed wins


def test_auto_search_is_light_for_causal_towers_on_cpu_and_for_bert_everywhere() -> None:
    from dataclasses import replace

    from amdet_audit.scan.config import TURNED_TOP, ScanConfig, preset_name

    assert preset_name("auto", "cpu") == "light" and preset_name("auto", "cuda:0") == "full"
    assert preset_name("auto", "cpu", causal=False) == "full" and preset_name("light", "cpu", causal=False) == "light"
    assert ScanConfig.preset("auto", "cpu", causal=False, family="siglip") == ScanConfig()
    for device in ("cpu", "cuda:0"):  # the full search finds model differences on BERT-family towers
        assert ScanConfig.preset("auto", device, causal=False, family="bert") == replace(ScanConfig.light(),
                                                                                         token_turned=TURNED_TOP)
    assert ScanConfig.preset("full", "cpu", causal=False, family="bert") == ScanConfig(token_turned=TURNED_TOP)
