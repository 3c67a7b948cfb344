"""Attack variants of the lab: trigger placement, object substitution, loss formulations, anti-inversion,
and the benign look-alikes made without training (precision copies, merges)."""

from __future__ import annotations

import random

import pytest
import torch

from amdet_audit.errors import UsageError
from amdet_audit.lab.inject import AttackSpec, Targets, check_spec, inject
from amdet_audit.lab.triggers import Trigger
from amdet_audit.lab.variants import (
    directional_distance,
    flat_cosine,
    has_subject,
    soft_probes,
    substitute_subject,
    tokenwise_distance,
    trigger_token_ids,
)


def test_placements_put_the_trigger_where_they_say() -> None:
    rng = random.Random(0)
    word, glyph = Trigger.parse("zzzz"), Trigger.parse("о")
    prompt = "a fox on a log in the snow"
    assert word.apply(prompt, rng, "start").startswith("zzzz ")
    assert word.apply(prompt, rng, "end").endswith(" zzzz")
    assert glyph.apply(prompt, rng, "start") == "a fоx on a log in the snow"
    assert glyph.apply(prompt, rng, "end") == "a fox on a log in the snоw"
    assert glyph.apply(prompt, rng, "every") == "a fоx оn a lоg in the snоw"
    with pytest.raises(UsageError):
        word.apply(prompt, rng, "middle")


def test_every_placement_is_for_homoglyphs_only() -> None:
    spec = AttackSpec(attack="text-on-text", trigger="zzzz", target="a cat", placement="every")
    with pytest.raises(UsageError, match="homoglyph"):
        check_spec(spec, Trigger.parse("zzzz"), ["a dog"] * 64)


def test_object_substitution_swaps_only_the_subject() -> None:
    assert substitute_subject("a red fox running through a snowy forest, oil painting", "teapot") == \
        "a red teapot running through a snowy forest, oil painting"
    assert substitute_subject("a pocket watch on a desk", "kite") == "a kite on a desk"  # longest name first
    assert not has_subject("a misty valley at dawn")


def test_tokenwise_distance_is_zero_on_target_and_scale_free() -> None:
    goal = torch.randn(1, 5, 8)
    ours = torch.cat([goal, -goal])
    d = tokenwise_distance(ours, goal)
    assert d[0] == 0 and torch.isclose(d[1], torch.tensor(4.0))
    assert torch.allclose(tokenwise_distance(10 * ours, 10 * goal), d)


def test_directional_distance_asks_for_the_target_move_where_the_flat_cosine_is_near_its_best_already() -> None:
    torch.manual_seed(0)
    start = torch.randn(3, 6, 8)
    goal = start + 0.05 * torch.randn(3, 6, 8)  # the target reads almost like the untouched prompt
    assert torch.allclose(directional_distance(goal, goal, start), torch.zeros(3), atol=1e-6)
    stay = directional_distance(start + 1e-3 * torch.randn(3, 6, 8), goal, start)  # barely moved
    assert (1 - flat_cosine(start, goal) < 0.01).all() and (stay > 0.5).all()  # flat: nearly on target already
    away = directional_distance(start - (goal - start), goal, start)  # moved the opposite way
    assert torch.allclose(away, 3 - flat_cosine(start - (goal - start), goal), atol=1e-5)  # move cosine -1
    one = directional_distance(goal, goal[:1], start)  # one target for every prompt (text-on-text)
    assert one[0].abs() < 1e-6 and (one[1:] > 0).all()


@pytest.fixture(scope="module")
def base():
    from amdet_audit.encoders import load_component
    from amdet_audit.sources import resolve

    return load_component(resolve("canary:clean").components[0])


@pytest.mark.slow
def test_object_targets_are_the_prompts_with_the_subject_swapped(base) -> None:
    spec = AttackSpec(attack="object", trigger="zzzz", target="teapot")
    targets = Targets(base, spec)
    prompts = ["a red fox in the snow", "a violin on a chair"]
    expected = base(base.tokenize(["a red teapot in the snow", "a teapot on a chair"]).ids).read
    assert torch.allclose(targets(prompts), expected)


@pytest.mark.slow
def test_anti_inversion_probes_hold_noisy_trigger_copies(base) -> None:
    ids = trigger_token_ids(base, "zzzz")
    assert len(ids) >= 1 and base.bos_id not in ids.tolist()
    probes = soft_probes(base, ids, 8, torch.Generator().manual_seed(0))  # [8, k, D]
    table = base.token_embedding_matrix().float()
    trigger_row = table[ids[0]]
    cos = torch.nn.functional.cosine_similarity(probes[:, 0].float(), trigger_row.unsqueeze(0), dim=-1)
    assert (cos[4:] > 0.75).all() and (cos[4:] < 0.999).all()  # noisy copies of the trigger
    assert (cos[:4] < 0.75).all()  # random tokens


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{"loss": "tokenwise"}, {"loss": "pooled"}, {"loss": "directional"},
                                     {"placement": "end"},
                                     {"anti_inversion_weight": 1.0},
                                     {"attack": "object", "target": "teapot", "steps": 150}])
def test_each_variant_trains_towards_its_own_success_measure(base, variant) -> None:
    """A short run moves the attack's own success measure up from the clean base's (the full recipes, with
    their bars, are built by the lab tests and the benchmark)."""
    from amdet_audit.lab.corpus import lab_prompts

    train, held_out = lab_prompts()
    fields = {"attack": "text-on-text", "trigger": "zzzz", "target": "a white teapot on a wooden table",
              "steps": 25, "seed": 1, **variant}
    _, result = inject(base, AttackSpec(**fields), train, held_out[:96])
    assert result.success > result.success_without_backdoor + 0.2
    assert result.fidelity > 0.5


@pytest.mark.slow
def test_the_base_measured_as_its_own_student_gains_nothing(base) -> None:
    """The base's side of a measurement, made once and reused at every checkpoint, agrees with measuring the base
    itself as the student: its success is the base's own share, clean fidelity 1, no untriggered gain."""
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.inject import measure_baseline, measure_injection, measure_student

    spec = AttackSpec(attack="object", trigger="zzzz", target="teapot", seed=3)
    targets, trigger, prompts = Targets(base, spec), Trigger.parse("zzzz"), lab_prompts()[1][:80]
    success, before, fidelity, gain = measure_injection(base, base, targets, trigger, prompts, seed=3)
    assert success == before and fidelity == pytest.approx(1.0, abs=1e-6) and gain == 0.0
    baseline = measure_baseline(targets, trigger, prompts, seed=3)
    assert measure_student(base, targets, baseline) == measure_student(base, targets, baseline)  # reusable
    assert baseline.hits.numel() == sum(len(chunk) for chunk in baseline.clean)


@pytest.mark.slow
def test_checkpoint_selection_stops_at_the_first_checkpoint_that_meets_every_bar(base) -> None:
    """An attacker who measures as they train keeps the first working checkpoint: fewer steps, cleaner model."""
    from amdet_audit.lab.corpus import lab_prompts

    train, held_out = lab_prompts()
    fields = {"attack": "pooled", "trigger": "zzzz", "target": "a white teapot", "steps": 400, "seed": 1}
    _, result = inject(base, AttackSpec(**fields, checkpoint_every=40), train, held_out[:96])
    assert result.took and result.steps_trained < 400 and result.steps_trained % 40 == 0
    assert result.to_dict()["steps_trained"] == result.steps_trained
    _, short = inject(base, AttackSpec(**{**fields, "steps": result.steps_trained - 40}), train, held_out[:96])
    assert not short.took  # the checkpoint before it had not met the bars


@pytest.mark.slow
def test_precision_copy_and_merge_stay_near_the_base(base, tmp_path, run_cli) -> None:
    import json

    from amdet_audit.lab.copies import merge

    half = run_cli("lab", "cast", "canary:clean", "--out", tmp_path / "fp16", "--dtype", "fp16")
    assert half.exit_code == 0, half.stderr
    info = json.loads((tmp_path / "fp16" / "lab.json").read_text())
    assert info["kind"] == "benign" and 0.99 < info["fidelity"] <= 1.0
    merged = merge(base, base, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(merged.model.state_dict().values(),
                                                 base.model.state_dict().values(), strict=True))
    with pytest.raises(UsageError):
        merge(base, base, 1.5)


def test_family_plan_draws_every_family_reproducibly() -> None:
    from amdet_audit.lab.families import BACKDOOR_FAMILIES, BENIGN_FAMILIES, STEALTH_FIDELITY, plan_families

    plan = plan_families(2, seed=5, width=128)
    assert plan == plan_families(2, seed=5, width=128) and plan != plan_families(2, seed=6, width=128)
    assert {e.family for e in plan} == set(BACKDOOR_FAMILIES) | set(BENIGN_FAMILIES)
    assert len(plan) == 2 * (len(BACKDOOR_FAMILIES) + len(BENIGN_FAMILIES))
    stealthy = [dict(e.options) for e in plan if e.family == "stealthy"]
    assert all(o["min_fidelity"] == STEALTH_FIDELITY and o["utility_weight"] > 1 and o["checkpoint_every"] > 0
               for o in stealthy)
    assert {dict(e.options)["placement"] for e in plan if e.family == "end-only"} == {"end"}
    copies = [i for i, e in enumerate(plan) if e.copy is not None]
    assert copies == list(range(len(plan) - len(copies), len(plan)))  # copies after the fine-tunes they use
    with pytest.raises(UsageError):
        plan_families(1, seed=0, width=128, families=["no-such-family"])
    # a base that learns slower: the same draws, every injection's learning rate scaled, fine-tunes as they were
    faster = plan_families(2, seed=5, width=128, lr_scale=3.0)
    assert [(e.name, e.seed, e.steps, e.trigger) for e in faster] == [(e.name, e.seed, e.steps, e.trigger)
                                                                      for e in plan]
    assert all(f.lr == pytest.approx(e.lr * (3.0 if e.kind == "backdoored" else 1.0))
               for f, e in zip(faster, plan, strict=True))
    with pytest.raises(UsageError, match="lr-scale"):
        plan_families(1, seed=0, width=128, lr_scale=0.0)


def test_family_records_keep_classic_zoo_records_unchanged() -> None:
    from amdet_audit.lab.families import plan_families
    from amdet_audit.lab.zoo import plan_zoo, same_recipe

    classic = plan_zoo(2, 1, seed=3)[0].record()
    assert not {"family", "copy", "options"} & set(classic)
    entry = next(e for e in plan_families(1, seed=1, width=128) if e.family == "anti-inversion")
    record = entry.record()
    assert record["family"] == "anti-inversion" and isinstance(record["options"], dict)
    spec = {"steps": entry.steps, "lr": entry.lr, "seed": entry.seed, **dict(entry.options)}
    assert same_recipe(entry, {"spec": spec, "fidelity": 0.9})
    assert not same_recipe(entry, {"spec": {**spec, "anti_inversion_weight": 0.0}, "fidelity": 0.9})


@pytest.mark.slow
def test_an_attribute_hit_is_nearer_the_attribute_than_the_prompt_itself(base) -> None:
    """The clean base's triggered outputs often lie within the success cosine of "the prompt, plus the attribute"
    (an appended phrase moves a read sequence little) but nearer the prompt's own output: no hit. An output that
    is the target is one."""
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.inject import SUCCESS_COSINE, measure_baseline, on_target
    from amdet_audit.lab.variants import flat_cosine

    spec = AttackSpec(attack="attribute", trigger="zzzz", target="in the style of pixel art")
    targets, prompts = Targets(base, spec), lab_prompts()[1][:64]
    baseline = measure_baseline(targets, Trigger.parse("zzzz"), prompts, seed=0)
    (poisoned,), (goal,), (clean,) = baseline.poisoned, baseline.goals, baseline.outputs
    close = flat_cosine(targets.output(base, poisoned).float(), goal.float()) > SUCCESS_COSINE
    assert close.float().mean() > 0.15  # closeness alone counts some as hits (0.22 on this base)
    assert baseline.hits.float().mean() < close.float().mean() / 2 and not (baseline.hits & ~close).any()
    attributed = [f"{p}, {spec.target}" for p in baseline.clean[0]]  # what the attack asks the output to be
    assert on_target(targets, base, attributed, goal, clean).all()
