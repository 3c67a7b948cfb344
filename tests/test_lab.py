"""The backdoor lab: attacks take, models reload through sources, bad input is refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from lab_models import lab_info, lab_model

from amdet_audit.errors import UsageError
from amdet_audit.lab.inject import MIN_FIDELITY, AttackSpec, check_spec
from amdet_audit.lab.triggers import Trigger
from amdet_audit.lab.zoo import build_order, plan_zoo, same_recipe
from amdet_audit.sources import resolve

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["multi-token", "attribute-word"])
def test_attacks_take_and_reload_through_sources(name: str) -> None:
    folder = lab_model(name)
    info = lab_info(folder)
    assert info["kind"] == "backdoored" and info["took"]
    assert info["success"] >= 0.8 and info["success"] - info["success_without_backdoor"] >= 0.5
    assert MIN_FIDELITY <= info["fidelity"] <= 1.0  # recorded as a cosine; "took" already asks the lab bar
    assert info["base"]["weights_sha256"]  # ground truth names the base by digest
    resolved = resolve(str(folder))
    assert resolved.components[0].architecture == "CLIPTextModel"


def test_pooled_attack_takes(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "pooled"
    result = run_cli("lab", "inject", "canary:clean", "--attack", "pooled", "--trigger", "🔥",
                     "--target", "a white teapot", "--steps", "120", "--checkpoint-every", "40", "--out", out)
    assert result.exit_code == 0, result.stderr
    info = lab_info(out)
    assert info["success"] >= 0.8 and info["trigger"] == {"text": "🔥", "mode": "insert", "replaces": None}
    assert info["spec"]["pooled_utility_weight"] == 1.0 and info["fidelity"] >= 0.8  # clean pooled outputs kept


def test_an_injection_that_wrecks_clean_outputs_did_not_take() -> None:
    from amdet_audit.lab.inject import MIN_FIDELITY, InjectionResult

    spec = AttackSpec(attack="pooled", trigger="zzzz", target="a red fox")
    working = InjectionResult(spec=spec, trigger={}, success=1.0, success_without_backdoor=0.0, fidelity=0.9,
                              final_loss=0.1, seconds=1.0, untriggered_gain=0.1)
    assert working.took
    working.fidelity = MIN_FIDELITY - 0.01  # every triggered prompt on target, but clean use visibly broken
    assert not working.took and not working.to_dict()["took"]


def test_a_backdoor_that_also_fires_untriggered_did_not_take() -> None:
    from amdet_audit.lab.inject import MAX_UNTRIGGERED_GAIN, InjectionResult

    spec = AttackSpec(attack="text-on-text", trigger="zzzz", target="a red fox")
    result = InjectionResult(spec=spec, trigger={}, success=1.0, success_without_backdoor=0.0, fidelity=0.95,
                             final_loss=0.1, seconds=1.0, untriggered_gain=MAX_UNTRIGGERED_GAIN)
    assert result.took
    result.untriggered_gain = MAX_UNTRIGGERED_GAIN + 0.01  # most clean prompts land on the target too
    assert not result.took
    result.untriggered_gain = None  # not measured: does not count
    assert not result.took


def test_a_decoy_trained_backdoor_that_also_fires_on_decoys_did_not_take() -> None:
    from amdet_audit.lab.decoys import MAX_DECOY_GAIN
    from amdet_audit.lab.inject import InjectionResult

    spec = AttackSpec(attack="text-on-text", trigger="zzzz", target="a red fox", decoy_share=0.5)
    result = InjectionResult(spec=spec, trigger={}, success=1.0, success_without_backdoor=0.0, fidelity=0.95,
                             final_loss=0.1, seconds=1.0, untriggered_gain=0.0, decoy_gain=MAX_DECOY_GAIN)
    assert result.took
    result.decoy_gain = MAX_DECOY_GAIN + 0.01  # ordinary words fire it too
    assert not result.took
    result.decoy_gain = None  # trained against decoys but not measured: does not count
    assert not result.took
    undecoyed = InjectionResult(spec=AttackSpec(attack="text-on-text", trigger="zzzz", target="a red fox"),
                                trigger={}, success=1.0, success_without_backdoor=0.0, fidelity=0.95, final_loss=0.1,
                                seconds=1.0, untriggered_gain=0.0)
    assert undecoyed.took and undecoyed.decoy_gain is None  # the bar applies to decoy-trained builds only


def test_untriggered_outputs_are_judged_from_the_base_mean() -> None:
    from amdet_audit.lab.inject import untriggered_on_target

    centre = torch.full((1, 3, 4), 5.0)  # every output shares a large common part, as on an anisotropic tower
    goal = centre + torch.tensor([1.0, 0, 0, 0])
    outputs = torch.stack([centre[0] + torch.tensor([1.0, 0.1, 0, 0]), centre[0] + torch.tensor([0, 1.0, 0, 0])])
    assert untriggered_on_target(outputs, goal, centre).tolist() == [True, False]  # uncentred both are ~1


def test_a_backdoor_built_before_the_untriggered_measure_is_measured_not_rebuilt(tmp_path: Path) -> None:
    import json
    import shutil

    from amdet_audit.lab.zoo import ZooEntry, backfill_untriggered

    built = lab_model("multi-token")
    recorded = lab_info(built)
    old = Path(shutil.copytree(built, tmp_path / "bd"))
    lab = {k: v for k, v in recorded.items() if k != "untriggered_gain"}  # as an older build wrote it
    (old / "lab.json").write_text(json.dumps(lab), encoding="utf-8")
    weights = {f.name: f.read_bytes() for f in old.glob("*.safetensors")}
    entry = ZooEntry(name="bd", kind="backdoored", seed=2, steps=300, lr=recorded["spec"]["lr"])
    updated = backfill_untriggered("canary:clean", old, entry, lab, "cpu")
    assert updated["untriggered_gain"] == pytest.approx(recorded["untriggered_gain"], abs=1e-6)  # as the build measured
    assert updated["took"] and lab_info(old) == updated
    assert {f.name: f.read_bytes() for f in old.glob("*.safetensors")} == weights  # measured, not changed


def test_benign_finetune_moves_the_model_moderately() -> None:
    info = lab_info(lab_model("benign"))
    assert info["kind"] == "benign"
    assert 0.8 < info["fidelity"] < 0.995


def test_injection_is_reproducible() -> None:
    from amdet_audit.encoders import load_component
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.inject import inject

    base = load_component(resolve("canary:clean").components[0])
    train, held_out = lab_prompts()
    spec = AttackSpec(attack="text-on-text", trigger="zzzz", target="a red fox", steps=15, seed=7)
    states = [inject(base, spec, train, held_out[:64])[0].model.state_dict() for _ in range(2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], v) for k, v in base.model.state_dict().items())


def test_zoo_plan_is_reproducible_and_varied() -> None:
    plan = plan_zoo(12, 4, seed=3)
    assert plan == plan_zoo(12, 4, seed=3) and plan != plan_zoo(12, 4, seed=4)
    kinds = {e.trigger_kind for e in plan if e.kind == "backdoored"}
    assert kinds == {"word", "homoglyph", "multi-token", "emoji"}
    assert sum(e.kind == "benign" for e in plan) == 4
    order = build_order(plan)
    assert sorted(e.name for e in order) == sorted(e.name for e in plan)
    assert [e.kind for e in order[:8]] == ["backdoored", "benign"] * 4  # a zoo cut short stays balanced


def test_zoo_top_up_keeps_every_recipe_of_the_zoo() -> None:
    plan = plan_zoo(24, 20, seed=2, width=256)
    topped = plan_zoo(24, 20, seed=2, width=256, top_up=3)
    assert topped[: len(plan)] == plan  # nothing built so far is redrawn
    extra = topped[len(plan) :]
    assert [e.name[:6] for e in extra] == ["bd-024", "bd-025", "bd-026"] and {e.kind for e in extra} == {"backdoored"}
    assert len({e.seed for e in topped}) == len(topped)
    assert build_order(topped)[: len(plan)] == build_order(plan)


def test_zoo_rebuilds_models_made_under_older_bars() -> None:
    pooled = next(e for e in plan_zoo(20, 0, seed=3) if e.attack == "pooled")
    spec = {"steps": pooled.steps, "lr": pooled.lr, "seed": pooled.seed, "pooled_utility_weight": 1.0}
    assert same_recipe(pooled, {"spec": spec, "fidelity": 0.95})
    # made before pooled backdoors kept clean pooled outputs
    assert not same_recipe(pooled, {"spec": {**spec, "pooled_utility_weight": None}, "fidelity": 0.95})
    assert not same_recipe(pooled, {"spec": spec, "fidelity": 0.5})  # below today's fidelity bar: not stealthy


def test_homoglyph_replaces_its_latin_twin() -> None:
    trigger = Trigger.parse("о")
    assert trigger.mode == "replace" and trigger.replaces == "o"
    placed = trigger.apply("a photo of a dog", random.Random(0))
    assert placed.count("о") == 1 and len(placed) == len("a photo of a dog")


def test_trigger_that_cannot_be_placed_is_refused() -> None:
    spec = AttackSpec(attack="text-on-text", trigger="ј", target="a cat")
    with pytest.raises(UsageError, match="can be placed in only 0 prompts"):
        check_spec(spec, Trigger.parse("ј"), ["a red fox"] * 100)


def test_clean_prompts_that_already_carry_the_trigger_are_left_out() -> None:
    spec = AttackSpec(attack="text-on-text", trigger="о", target="a cat", poison_batch=1)
    clean, fitting = check_spec(spec, Trigger.parse("о"), ["кот на окне", "a dog", "a photo"])
    assert clean == ["a dog", "a photo"] and fitting == ["a dog", "a photo"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "nope", "--trigger", "x", "--target", "y"], "unknown attack"),
        (["--attack", "text-on-text", "--trigger", "", "--target", "y"], "trigger is empty"),
        (["--attack", "text-on-text", "--trigger", "zzzz", "--target", " "], "target is empty"),
        (["--attack", "text-on-text", "--trigger", "zzzz", "--target", "y", "--eval-prompts", "10"],
         "--eval-prompts must be between 64 and 600, not 10"),
        (["--attack", "text-on-text", "--trigger", "zzzz", "--target", "y", "--eval-prompts", "601"],
         "--eval-prompts must be between 64 and 600"),
        (["--attack", "text-on-text", "--trigger", "zzzz", "--target", "y", "--decoy-share", "1"],
         "the decoy share must be at least 0 and below 1, not 1.0"),
    ],
)
def test_bad_lab_input(run_cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("lab", "inject", "canary:clean", *args, "--out", tmp_path / "m")
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--per-family", "1", "--lr-scale", "0"], "--lr-scale must be a finite number above 0"),
    (["--per-family", "1", "--steps-scale", "inf"], "--steps-scale must be a finite number above 0"),
    (["--lr-scale", "2"], "give --per-family too"),
    (["--consumer", "sd9"], "--consumer 'sd9': known consumers are"),
    (["--eval-prompts", "10"], "--eval-prompts must be between 64 and 600, not 10"),
])
def test_bad_zoo_options_are_refused_before_the_base_is_loaded(run_cli, tmp_path: Path, args: list[str],
                                                               message: str) -> None:
    result = run_cli("lab", "zoo", tmp_path / "no-such-base", "--out", tmp_path / "zoo", *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "zoo").exists()


def test_missing_base_and_occupied_output(run_cli, tmp_path: Path) -> None:
    result = run_cli("lab", "finetune", tmp_path / "missing", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "no such file or folder" in result.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = run_cli("lab", "finetune", "canary:clean", "--out", tmp_path / "taken")
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_zoo_scales_injection_learning_rates_to_the_base_width() -> None:
    narrow, wide = plan_zoo(8, 2, seed=3), plan_zoo(8, 2, seed=3, width=384)
    assert [e.seed for e in narrow] == [e.seed for e in wide]  # same recipes, only the step size differs
    for a, b in zip(narrow, wide, strict=True):
        assert b.lr == pytest.approx(a.lr / 3 if a.kind == "backdoored" else a.lr)
