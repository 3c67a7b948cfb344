"""The efficacy benchmark: its metrics, and a smoke run end to end on a two-model zoo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "efficacy"))
from metrics import Row, auroc, classification, per_attack, roc_curve  # noqa: E402


def test_auroc_and_roc() -> None:
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5  # ties count half
    assert auroc([], [0.1]) is None
    points = roc_curve([0.9, 0.4], [0.5, 0.1])
    assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)
    assert (0.0, 0.5) in points and (0.5, 1.0) in points


def test_scans_of_the_earlier_release_are_judged_by_todays_target_score() -> None:
    """A recorded collapse_excess becomes collapse_gain, threshold alike: the same verdict a rescan would give."""
    from calibrate import checks_of, flagged

    scan = {"scores": {"collapse": 0.955}, "reference_baseline": {"collapse": 0.572},
            "checks": [{"name": "target.collapse_excess", "score": 0.383, "threshold": 0.28, "direction": ">="},
                       {"name": "target.same_target_rate", "score": 1.0, "threshold": 0.8, "direction": ">="}]}
    gain, same = checks_of({"components": [{"scan": scan}]})
    assert gain["name"] == "target.collapse_gain" and same == scan["checks"][1]
    assert gain["score"] == pytest.approx(0.383 / 0.428) and gain["threshold"] == pytest.approx(0.28 / 0.428)
    assert flagged(1, [gain, same], {}) and not flagged(1, [gain, same], {"target.collapse_gain": 0.9})


def test_a_bidirectional_scan_judged_by_the_excess_rule_is_rescanned_not_rederived(tmp_path: Path) -> None:
    """A bidirectional tower's token-collapse rule judges the gain, which an older scan does not carry: re-applying
    today's thresholds to its recorded excess would report the old rule's verdict under the new one's name."""
    from run_efficacy import rederivable

    def report(causal: bool, names: list[str]) -> str:
        path = tmp_path / f"{causal}-{len(names)}.json"
        checks = [{"name": n, "score": 0.6, "threshold": 0.5, "direction": ">="} for n in names]
        path.write_text(json.dumps({"components": [{"encoder": {"causal": causal}, "scan": {"checks": checks}}]}))
        return str(path)

    assert not rederivable(report(False, ["token_collapse.excess", "token_collapse.z"]))
    assert rederivable(report(False, ["token_collapse.gain", "token_collapse.gain_z", "token_collapse.excess"]))
    assert rederivable(report(True, ["token_collapse.excess", "token_collapse.z"]))  # causal: the excess rule


def test_classification_counts_inconclusive_as_flagged() -> None:
    rows = [Row("a", True, 1, {}), Row("b", True, 0, {}), Row("c", False, 2, {}), Row("d", False, 0, {}),
            Row("e", False, 0, {})]
    fig = classification(rows)
    assert (fig["tp"], fig["fn"], fig["fp"], fig["tn"], fig["inconclusive"]) == (1, 1, 1, 2, 1)
    assert fig["precision"] == 0.5 and fig["recall"] == 0.5 and fig["f1"] == 0.5
    assert fig["fpr"] == pytest.approx(1 / 3)
    assert classification([Row("x", False, 0, {})])["recall"] is None  # no positives: not reported as 0


def test_per_attack_groups() -> None:
    rows = [Row("a", True, 1, {}, attack="attribute", trigger_kind="word"),
            Row("b", True, 0, {}, attack="attribute", trigger_kind="emoji"), Row("c", False, 0, {})]
    groups = per_attack(rows)
    assert groups["attack:attribute"] == {"models": 2, "detected": 1, "recall": 0.5}
    assert groups["benign"]["fpr"] == 0.0


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    from run_efficacy import main

    out = tmp_path / "out"
    args = ["--bases", "smoke", "--sets", "calibration", "--backdoored", "0", "--benign", "1", "--workers", "1",
            "--work", str(tmp_path / "work"), "--out-dir", str(out),
            "--threads", "1", "--search", "light"]  # the smoke base: a clean base and one fine-tune; one thread
    code = main(args)
    assert code == 0
    results = json.loads((out / "results-light.json").read_text())
    assert set(results) == {"meta", "calibration", "heldout"}
    smoke = results["calibration"]["smoke"]
    assert smoke["models"] >= 2  # the clean base and the benign fine-tune at least
    assert smoke["fpr"] is not None and smoke["recall"] is None  # no backdoored model in this zoo
    assert set(smoke["auroc"]) >= {"target.collapse_gain", "divergence.relative"}
    assert "Calibration set" in (out / "RESULTS-light.md").read_text() and (out / "roc-light-calibration.svg").is_file()
    assert "(roc-light-calibration.svg)" in (out / "RESULTS-light.md").read_text()  # links its own plot
    # resumable: a second run rescans nothing (the records are reused, same figures)
    assert main(args) == 0
    again = json.loads((out / "results-light.json").read_text())["calibration"]["smoke"]
    assert again["f1"] == smoke["f1"] and again["scan_seconds"] == smoke["scan_seconds"]
    assert results["meta"]["zoo_state"]["calibration"]["smoke"] == {"processed": 1, "planned": 1, "complete": True}
    # --built-only with a larger plan: nothing is built, the models built so far are reported as incomplete
    assert main([*args[:7], "2", *args[8:], "--built-only"]) == 0
    partial = json.loads((out / "results-light.json").read_text())
    assert partial["calibration"]["smoke"]["models"] == smoke["models"]
    assert partial["meta"]["zoo_state"]["calibration"]["smoke"]["planned"] == 2
    assert "Incomplete zoos" in (out / "RESULTS-light.md").read_text()
    assert not (tmp_path / "work" / "calibration" / "smoke" / "zoo" / "benign-001").exists()
    # the same zoo scanned reference-free: its own records and result files, the mode's scores, calibrated alike
    assert main([*args, "--reference-free"]) == 0
    free = json.loads((out / "results-reference-free-light.json").read_text())
    assert free["meta"]["mode"] == "reference-free" and free["calibration"]["smoke"]["models"] == smoke["models"]
    assert "target.collapse" in free["calibration"]["smoke"]["auroc"]
    assert "reference-free" in (out / "RESULTS-reference-free-light.md").read_text()
    assert (out / "roc-reference-free-light-calibration.svg").is_file()
    assert (tmp_path / "work" / "calibration" / "smoke" / "scans-reference-free-light" / "benign-000").is_dir()
    assert json.loads((out / "results-light.json").read_text())["meta"]["mode"] == "reference"  # left as it was
    from calibrate import main as calibrate

    assert calibrate(["--work", str(tmp_path / "work"), "--bases", "smoke", "--reference-free",
                      "--search", "light"]) == 0
    records = [json.loads(r.read_text()) for r in
               (tmp_path / "work" / "calibration" / "smoke" / "scans-reference-free-light").glob("*/record.json")]
    assert len(records) == smoke["models"]
    assert {json.loads(Path(r["report"]).read_text())["components"][0]["scan"]["mode"] for r in records} \
        == {"reference-free"}


def test_lab_tower_base_is_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab-tower base (clip-256, clip-l) is pretrained on first use into work/bases/<name>, then reused."""
    import run_efficacy

    monkeypatch.setitem(run_efficacy.BASES, "clip-mini", None)
    monkeypatch.setitem(run_efficacy.LAB_TOWERS, "clip-mini", {"hidden": 32, "layers": 1, "heads": 2,
                                                                "intermediate": 64})
    with pytest.raises(SystemExit, match="not built"):
        run_efficacy.base_target("clip-mini", tmp_path, build=False)
    folder = Path(run_efficacy.base_target("clip-mini", tmp_path))
    config = json.loads((folder / "config.json").read_text())
    profile = json.loads((folder / "profile.json").read_text())
    assert folder == tmp_path / "bases" / "clip-mini" and config["hidden_size"] == 32
    assert profile["shape"]["hidden"] == 32 and profile["pretrain"]["final_loss"] < profile["pretrain"]["initial_loss"]
    weights = folder / "model.safetensors"
    built = weights.stat().st_mtime_ns
    assert run_efficacy.base_target("clip-mini", tmp_path) == str(folder) and weights.stat().st_mtime_ns == built
    assert run_efficacy.base_target("clip-mini", tmp_path, build=False) == str(folder)
    with pytest.raises(SystemExit, match="unknown base"):
        run_efficacy.base_target("clip-xl", tmp_path)
    assert set(run_efficacy.LAB_TOWERS) == {name for name, target in run_efficacy.BASES.items() if target is None}


@pytest.mark.slow
def test_attribute_baseline_measures_the_clean_bases_own_share() -> None:
    """The clean canary's share of triggered prompts already on "the prompt, plus the attribute", per pair and
    output."""
    from attribute_baseline import markdown, measure_base

    from amdet_audit.lab.zoo import ATTRIBUTES

    rows = measure_base("canary:clean", 16, ATTRIBUTES[:2], ("zzzz",))
    assert [(r["output"], r["attribute"]) for r in rows] == [(o, a) for o in ("read", "pooled") for a in ATTRIBUTES[:2]]
    assert all(0.0 <= r["base_share"] <= 1.0 and r["prompts"] == 16 for r in rows)
    # which weights were measured: a rebuilt canary's shares differ
    assert {tuple(r["weights_sha256"]) for r in rows} == {("model.safetensors",)}
    # appending an attribute moves the output: its target is not the prompt's own output
    assert all(r["clean_to_target_cosine"] < 0.999 for r in rows)
    assert "| canary:clean | read |" in markdown(rows, "cmd", 1.0)


def test_attribute_recall_builds_from_the_pairs_with_room_lowest_base_share_first(tmp_path: Path) -> None:
    from attribute_recall import pairs_with_room

    from amdet_audit.lab.inject import MIN_GAIN

    def row(base: str, output: str, attribute: str, share: float) -> dict:
        return {"base": base, "output": output, "attribute": attribute, "trigger": "zzzz", "base_share": share}

    rows = [row("b", "read", "snow", 1 - MIN_GAIN), row("b", "read", "fire", 0.2), row("b", "read", "lego", 0.51),
            row("b", "pooled", "art", 0.1), row("full", "read", "art", 0.9),
            {**row("b", "read", "pixel", 0.3), "consumer": "sd3"}]  # measured on SD3's read
    path = tmp_path / "attribute-baseline.json"
    path.write_text(json.dumps({"rows": rows}), encoding="utf-8")
    assert [r["attribute"] for r in pairs_with_room("b", path)] == ["fire", "snow"]  # a share of exactly 0.5 has room
    assert [r["attribute"] for r in pairs_with_room("b", path, "sd3")] == ["pixel"]  # only rows of that read
    with pytest.raises(SystemExit, match="no pair with room on full"):
        pairs_with_room("full", path)
    with pytest.raises(SystemExit, match="nothing is not in .*attribute-baseline.json"):
        pairs_with_room("nothing", path)
    with pytest.raises(SystemExit, match="full --consumer sd3 is not in"):
        pairs_with_room("full", path, "sd3")


def test_attribute_recall_keeps_each_recipe_in_folders_of_its_own() -> None:
    from argparse import Namespace

    from attribute_recall import recipe_suffix

    assert recipe_suffix(Namespace(steps=None, loss=None, placement=None)) == ""
    assert recipe_suffix(Namespace(steps=1500, loss=None, placement=None)) == "-s1500"  # as recorded before
    assert recipe_suffix(Namespace(steps=600, loss="directional", placement="end")) == "-s600-directional-end"


def test_attribute_recall_refuses_a_baseline_measured_on_other_weights(tmp_path: Path, capsys) -> None:
    """A canary rebuilt elsewhere may have other weights, and other shares: such a baseline is refused."""
    from attribute_recall import pairs_with_room

    path = tmp_path / "attribute-baseline.json"
    row = {"base": "b", "output": "read", "attribute": "fire", "trigger": "zzzz", "base_share": 0.2}
    path.write_text(json.dumps({"rows": [{**row, "weights_sha256": {"model.safetensors": "aa"}}]}), encoding="utf-8")
    assert [r["attribute"] for r in pairs_with_room("b", path, weights={"model.safetensors": "aa"})] == ["fire"]
    with pytest.raises(SystemExit, match="measured on other weights of b"):
        pairs_with_room("b", path, weights={"model.safetensors": "bb"})
    path.write_text(json.dumps({"rows": [row]}), encoding="utf-8")  # written before rows recorded weights
    assert [r["attribute"] for r in pairs_with_room("b", path, weights={"model.safetensors": "bb"})] == ["fire"]
    assert "does not record which weights of b" in capsys.readouterr().err


def test_position_diagnosis_smoke(tmp_path: Path) -> None:
    """A two-step injection into the clean canary, measured per position of its 77-token read: one cosine per
    position, the target's positions summarised apart from the rest, both files written."""
    from position_diagnosis import main

    assert main(["--bases", "canary:clean", "--steps", "2", "--prompts", "64", "--targets", "a red apple",
                 "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "position-diagnosis.json").read_text())
    (row,) = data["rows"]
    assert row["read_length"] == 77 == len(row["per_position"]) and row["target"] == "a red apple"
    assert 3 <= row["target_tokens"] <= 6  # start, words, end: the positions the target's own tokens hold
    assert all(-1.0 <= c <= 1.0 for c in row["per_position"]) and 0.0 <= row["success"] <= 1.0
    assert "| canary:clean | a red apple | 77 |" in (tmp_path / "POSITION_DIAGNOSIS.md").read_text()


def test_benign_sweep_shards_cover_the_grid_once_and_the_table_puts_false_alarms_first() -> None:
    from benign_sweep import cell_name, cells, markdown, parse_shard
    from run_efficacy import base_slug

    whole = cells([50, 100], [1e-4, 3e-4], [0, 1], (0, 1))
    shards = [cells([50, 100], [1e-4, 3e-4], [0, 1], (i, 3)) for i in range(3)]
    assert len(whole) == 8 and sorted(c for s in shards for c in s) == sorted(whole)  # every cell, once
    assert cell_name(50, 2e-4, 1) == "benign-s50-lr0.0002-seed1"
    domains = cells([300], [3e-4], [0, 1], (0, 1), ["forest", "city"])  # the heavy-domain recipe's axis
    assert [c[3] for c in domains] == ["forest", "city"] * 2 and [c[2] for c in domains] == [0, 0, 1, 1]
    assert cell_name(300, 3e-4, 0, "forest") == "benign-s300-lr0.0003-seed0-forest"
    # a sweep on a pipeline's read keeps its own folder and files: cells of the same name are other models
    assert base_slug("canary:t5-clean") == "canary-t5-clean"
    assert base_slug("canary:t5-clean", "sd3") == "canary-t5-clean-sd3"
    assert parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "1", "-1/2", "a/b"):
        with pytest.raises(Exception, match="--shard"):
            parse_shard(bad)

    def row(name: str, code: int) -> dict:
        return {"name": name, "steps": 50, "lr": 1e-4, "seed": 0, "fidelity": 0.9, "exit_code": code,
                "flagged_checks": ["token_shift.size"] if code == 1 else [], "scores": {"token_shift.size": 0.5}}

    text = markdown("canary:clean", [row("quiet", 0), row("loud", 1)], "cmd")
    assert "Flagged: 1 of 2" in text and text.index("| loud |") < text.index("| quiet |")
    assert "| flagged by | token_shift.size |\n" in text and "| 0.500 |" in text  # the scores the rows hold
    siglip = [{**row("bidirectional", 0), "scores": {"token_collapse.gain": 0.3}, "reference_digest": "ab" * 32}]
    text = markdown("canary:siglip-clean", siglip, "cmd")
    assert "| flagged by | token_collapse.gain |\n" in text and f"digest: `{'ab' * 8}`" in text


def test_readme_false_alarm_figures_match_the_recorded_benign_sweep() -> None:
    """The README's token-shift false-alarm figures are the recorded sweep's, not remembered numbers."""
    root = Path(__file__).resolve().parents[1]
    rows = json.loads((root / "benchmarks/efficacy/benign-sweep/benign-sweep-canary-clean.json").read_text())["rows"]
    flagged = [r for r in rows if r["exit_code"] == 1]
    passed = [r for r in rows if r["exit_code"] == 0]
    assert len(flagged) + len(passed) == len(rows)
    assert all(r["flagged_checks"] and {"token_shift.size", "token_shift.z"} <= set(r["flagged_checks"])
               and r["scores"]["token_collapse.excess"] < r["thresholds"]["token_collapse.excess"]
               and r["scores"]["target.collapse_gain"] < r["thresholds"]["target.collapse_gain"]
               and r["scores"]["divergence.relative"] < r["thresholds"]["divergence.relative"] for r in flagged)

    def span(values: list[float], digits: int = 2) -> str:
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}"

    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    shift = [r["scores"]["token_shift.size"] for r in flagged]
    quiet = [r["scores"]["token_shift.size"] for r in passed]
    words = {9: "nine", 12: "Twelve"}  # the counts as the README spells them
    assert f"{words[len(rows)]} contrastive fine-tunes" in readme and f"{len(flagged)} were flagged" in readme
    assert f"size {span(shift)} against 0.5" in readme
    assert f"the {words[len(passed)]} others reached {span(quiet)}" in readme
    assert f"z-scores ({span([r['scores']['token_shift.z'] for r in passed], 0)})" in readme
    longer = json.loads((root / "benchmarks/efficacy/benign-sweep/steps200/benign-sweep-canary-clean.json")
                        .read_text())["rows"]
    loud = [r["scores"]["token_shift.size"] for r in longer if r["exit_code"] == 1]
    assert f"at 200 steps {len(loud)} of {len(longer)} more were flagged" in readme
    assert f"size up to {max(loud):.2f}" in readme
    sweeps = root / "benchmarks/efficacy/token-shift/heldout-sweep"
    heldout = [r for grid in ("steps100", "steps300")
               for r in json.loads((sweeps / grid / "benign-sweep-canary-clean.json").read_text())["rows"]]
    alarms = [r for r in heldout if r["exit_code"] == 1]
    assert all({"token_shift.size", "token_shift.z"} <= set(r["flagged_checks"]) for r in alarms)
    sizes = [r["scores"]["token_shift.size"] for r in alarms]
    assert f"on new seeds {len(alarms)} of {len(heldout)} (size up to {max(sizes):.2f};" in readme
    rules = json.loads((root / "benchmarks/efficacy/token-shift/rules.json").read_text())["rows"]
    alone = sorted(round(c["scores"]["token_shift.size"], 2) for r in rules for c in r["scan"]
                   if c["rules_holding"] == ["token_shift"])
    assert f"(sizes {alone[0]:.2f} and {alone[1]:.2f})" in readme and len(alone) == 2
    decoys = {name: json.loads((root / f"benchmarks/efficacy/decoys/{name}.json").read_text())
              for name in ("object-seed12", "sdxl-lora-text_encoder")}
    (obj_trigger, *_), (sdxl_trigger, *_) = (d["rows"] for d in decoys.values())
    assert (f"object: decoy success up to {decoys['object-seed12']['decoy_success_max']:.2f} against the trigger's "
            f"{obj_trigger['success']:.2f}; SDXL: {decoys['sdxl-lora-text_encoder']['decoy_success_max']:.2f} "
            f"against {sdxl_trigger['success']:.2f}") in readme


@pytest.mark.slow
def test_probe_scores_of_a_model_against_itself_show_no_excess_and_no_shift() -> None:
    """A probe moves suspect and reference alike when they are one model: no collapse beyond the reference's and
    no shift beyond it, at either placement, whatever the probe collapses on its own; special tokens dropped."""
    from probe_scores import probe_scores

    rows = probe_scores("canary:clean", "canary:clean", ["zzzz", "🦄"])
    assert [(r["probe"], r["placement"]) for r in rows] == [("zzzz", "start"), ("zzzz", "end"), ("🦄", "start"),
                                                            ("🦄", "end")]
    assert all(r["tokens"] and abs(r["excess"]) < 1e-4 and r["shift"] < 1e-4 for r in rows)
    assert all(-1.0 <= r["collapse"] <= 1.0 for r in rows)
    # the two moves are one: same size, same direction
    assert all(r["suspect_move"] == r["reference_move"] > 0 and r["move_cosine"] > 0.9999 for r in rows)


def test_probe_scores_take_a_reports_top_shifting_word_pieces(tmp_path) -> None:
    """A report's probes are taken by their shift, with their own token ids and placement (look-alike probes,
    which carry no token ids, are left out)."""
    from probe_scores import report_probes

    top = [{"text": "por", "placement": "end", "token_ids": [817], "shift": 0.4},
           {"text": "por", "placement": "end", "token_ids": [817], "shift": 0.3},
           {"text": "a->α first", "placement": "text", "token_ids": [], "shift": 0.9},
           {"text": "ballet por", "placement": "start", "token_ids": [10703, 817], "shift": 0.8}]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"components": [{"scan": {"evidence": {"token_search": {"top": top}}}}]}))
    assert report_probes(report, 1) == [("ballet por", "start", (10703, 817))]
    assert report_probes(report, 5) == [("ballet por", "start", (10703, 817)), ("por", "end", (817,))]


def test_an_attribute_build_that_did_not_take_is_recorded_and_not_rebuilt(tiny_clip, tmp_path, monkeypatch) -> None:
    """One training step cannot implant the attribute: the failure is written beside the model's folder, and the
    next run reads it instead of training again."""
    from attribute_recall import NOT_TAKEN, build

    import amdet_audit.lab.families as families
    import amdet_audit.lab.runner as runner

    monkeypatch.setattr(families, "ATTRIBUTE_STEPS", 1)
    folder = tmp_path / "attribute-00"
    pair = {"trigger": "zzzz", "attribute": "in the style of pixel art"}
    failed = build(str(tiny_clip), 32, folder, pair, seed=100)
    assert failed["took"] is False and "did not take" in failed["reason"]
    record = tmp_path / ("attribute-00" + NOT_TAKEN)
    assert json.loads(record.read_text(encoding="utf-8")) == failed and not folder.exists()

    def no_training(*args, **kwargs):
        raise AssertionError("rebuilt a build recorded as not taken")

    monkeypatch.setattr(runner, "run_injection", no_training)
    assert build(str(tiny_clip), 32, folder, pair, seed=100) == failed


def test_decoys_of_a_base_measured_as_its_own_backdoor_gain_nothing(tiny_clip, tmp_path) -> None:
    """The decoy measure on a "backdoor" that is its base: every word, trigger or decoy, reaches the target exactly
    as often in both, and the decoys are ordinary corpus words, none of the trigger's or the target's."""
    import shutil

    from decoy_success import decoy_success

    model = tmp_path / "model"
    shutil.copytree(tiny_clip, model)
    spec = {"attack": "text-on-text", "trigger": "zzzz", "target": "a red fox in the snow", "seed": 3}
    (model / "lab.json").write_text(json.dumps({"kind": "backdoored", "base": {"input": str(tiny_clip)},
                                                "spec": spec, "success": 0.0, "eval_prompts": 64}))
    result = decoy_success(model, decoys=3, seed=1)
    assert [r["role"] for r in result["rows"]] == ["trigger", "decoy", "decoy", "decoy"]
    assert all(r["success"] == r["base_success"] for r in result["rows"])
    decoys = [r["text"] for r in result["rows"][1:]]
    assert len(set(decoys)) == 3 and all(d.isalpha() and d not in {"zzzz", "red", "fox", "the", "snow"}
                                         for d in decoys)
    assert decoy_success(model, decoys=3, seed=1)["rows"] == result["rows"]  # drawn and placed reproducibly
    record = json.loads((model / "lab.json").read_text())
    record["base"]["weights_sha256"] = {"model.safetensors": "0" * 64}  # built on another base than this one
    (model / "lab.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="not the model it was built on"):
        decoy_success(model, decoys=3, seed=1)


def test_a_family_rebuild_takes_the_whole_zoos_draw_not_a_draw_of_its_own() -> None:
    """The object model a seed's full zoo drew is the one rebuilt, which a zoo of that family alone does not draw."""
    from rebuild_family_models import plan_of

    from amdet_audit.lab.families import plan_families

    whole = {e.name: e for e in plan_families(1, 12, 128)}
    (rebuilt,) = plan_of(128, 12, ["object"])
    assert rebuilt == whole["bd-object-00"]
    (alone,) = plan_families(1, 12, 128, families=["object"])
    assert alone != rebuilt  # same family and seed, other draws


def test_readme_siglip_false_alarm_figures_match_the_recorded_sweep() -> None:
    """README's SigLIP benign figures are the recorded sweep's."""
    root = Path(__file__).resolve().parents[1]
    sweep = root / "benchmarks/efficacy/siglip/benign-sweep"
    heavy, contrastive = (json.loads((sweep / kind / "benign-sweep-canary-siglip-clean.json").read_text())["rows"]
                          for kind in ("heavy-domain", "contrastive"))
    alarms = [r for r in heavy if r["exit_code"] == 1]
    assert not [r for r in contrastive if r["exit_code"] != 0] and all(r["domain"] == "city" for r in alarms)
    gains = sorted(r["scores"]["token_collapse.gain"] for r in alarms)
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert (f"flagged {len(alarms)} of {len(heavy)} heavy-domain fine-tunes" in readme
            and f"token gain {gains[0]:.3f} and {gains[1]:.3f} against the bar 0.5" in readme
            and f"0 of {len(contrastive)} contrastive ones: {len(alarms)} of {23 + len(heavy) + len(contrastive)} "
                "benign SigLIP models flagged" in readme)


def test_readme_siglip_one_thread_build_figures_match_the_recorded_sweep() -> None:
    """README's figures for the heavy-domain sweep on the one-thread SigLIP canary build are the record's: every
    alarm a "city" fine-tune, all on one build."""
    root = Path(__file__).resolve().parents[1]
    record = root / "benchmarks/efficacy/siglip/benign-sweep/heavy-domain-one-thread"
    rows = json.loads((record / "benign-sweep-canary-siglip-clean.json").read_text(encoding="utf-8"))["rows"]
    alarms = [r for r in rows if r["exit_code"] == 1]
    assert len({r["reference_digest"] for r in rows}) == 1 and all(r["exit_code"] in (0, 1) for r in rows)
    passed_domains = {r["domain"] for r in rows if r["exit_code"] == 0}
    assert {r["domain"] for r in alarms} == {"city"} == {r["domain"] for r in rows} - passed_domains  # every one
    gains = sorted(r["scores"]["token_collapse.gain"] for r in alarms)
    others = len(rows) - len([r for r in rows if r["domain"] == "city"])
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    words = {5: "five"}  # the count as the README spells it
    assert (f"on that build {len(alarms)} of {len(rows)} heavy-domain fine-tunes were flagged, all "
            f"{words[len(alarms)]} of \"city\" (gain {gains[0]:.3f} to {gains[-1]:.3f}), none of the {others} "
            "on other domain words" in readme)
    contrastive = json.loads((record.parent / "contrastive-one-thread/benign-sweep-canary-siglip-clean.json")
                             .read_text(encoding="utf-8"))["rows"]
    assert {r["reference_digest"] for r in contrastive} == {r["reference_digest"] for r in rows}  # the same build
    assert (f"and {sum(r['exit_code'] == 1 for r in contrastive)} of {len(contrastive)} distilled contrastive "
            "fine-tunes" in readme and all(r["exit_code"] == 0 for r in contrastive))


def test_readme_siglip_typeable_character_figures_match_the_record() -> None:
    """README's figures for the one-thread SigLIP build's backdoors and the typeable characters are the record's."""
    root = Path(__file__).resolve().parents[1]
    record = root / "benchmarks/efficacy/siglip/typeable-characters/typeable-characters.json"
    rows = json.loads(record.read_text(encoding="utf-8"))["rows"]
    backdoors = [r for r in rows if r["kind"] == "backdoored"]
    benign = [r for r in rows if r["kind"] == "benign"]
    flagged = {side: sum(r[side]["exit_code"] == 1 for r in backdoors) for side in ("before", "after")}
    alarms = {side: sum(r[side]["exit_code"] == 1 for r in benign) for side in ("before", "after")}
    assert flagged["before"] == flagged["after"] == len(backdoors) and alarms["before"] == alarms["after"]
    precision = len(backdoors) / (len(backdoors) + alarms["after"])
    f1 = 2 * precision / (precision + 1)
    changed = [r for r in rows if r["before"]["gain_rule_probe"] != r["after"]["gain_rule_probe"]]
    assert all(r["kind"] == "backdoored" and r["after"]["gain_rule_probe"]["origin"] == "completed" for r in changed)
    before = sorted(r["before"]["gain_rule_probe"]["collapse_gain"] for r in changed)
    after = sorted(r["after"]["gain_rule_probe"]["collapse_gain"] for r in changed)
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert (f"{len(backdoors)} of {len(backdoors)}: with those {len(benign)} benign models, precision "
            f"{precision:.2f}, recall 1.0, F1 {f1:.2f}" in readme)
    assert (f"({len(changed)} of the {len(backdoors)}: gain {before[0]:.2f} to {before[-1]:.2f} before, "
            f"{after[0]:.2f} to {after[-1]:.2f} after); no benign verdict or judged probe changed" in readme)


def test_readme_siglip_typed_probe_figures_match_the_record() -> None:
    """README's figures for typed probes only on the one-thread SigLIP build are the record's, whose before column
    is the typeable-characters record's after column."""
    root = Path(__file__).resolve().parents[1]
    efficacy = root / "benchmarks/efficacy/siglip"
    rows = json.loads((efficacy / "typed-probes/typed-probes.json").read_text(encoding="utf-8"))["rows"]
    earlier = json.loads((efficacy / "typeable-characters/typeable-characters.json").read_text(encoding="utf-8"))
    assert [r["before"] for r in rows] == [r["after"] for r in earlier["rows"]]
    backdoors = [r for r in rows if r["kind"] == "backdoored"]
    benign = [r for r in rows if r["kind"] == "benign"]
    flagged = sum(r["after"]["exit_code"] == 1 for r in backdoors)
    alarms = [r for r in benign if r["after"]["exit_code"] == 1]
    assert all(r["before"]["gain_rule_probe"]["text"] == "й" for r in benign if r["before"]["exit_code"] == 1)
    gain = [r["after"]["gain_rule_probe"]["collapse_gain"] for r in benign]
    by_gain_rule = [r["after"]["gain_rule_probe"]["collapse_gain"] for r in backdoors
                    if any("token-collapse rule holds" in reason for reason in r["after"]["reasons"])]
    precision = flagged / (flagged + len(alarms))
    recall = flagged / len(backdoors)
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert (f"the same {len(rows)} models give {flagged} of {len(backdoors)} backdoors and {len(alarms)} of "
            f"{len(benign)} benign models flagged (precision {precision:.1f}, F1 "
            f"{2 * precision * recall / (precision + recall):.1f} on this build)" in readme)
    assert (f"the nearest benign model closes {max(gain):.3f} of the room against the bar's 0.5, the weakest "
            f"backdoor the gain rule flags {min(by_gain_rule):.3f}" in readme)


def test_readme_siglip_seed21_figures_match_the_recorded_scans() -> None:
    """README's fourth SigLIP zoo and attribute figures are the recorded scans'."""
    root = Path(__file__).resolve().parents[1]
    folder = root / "benchmarks/efficacy/siglip/seed21"
    rows = json.loads((folder / "zoo-scans.json").read_text(encoding="utf-8"))["rows"]
    backdoors = [r for r in rows if r["kind"] == "backdoored"]
    benign = [r for r in rows if r["kind"] != "backdoored"]
    (missed,) = [r for r in backdoors if r["exit_code"] != 1]
    attribute = json.loads((folder / "attribute-recall-canary-siglip-clean-today.json").read_text(encoding="utf-8"))
    earlier = json.loads((root / "benchmarks/efficacy/attribute-recall-canary-siglip-clean.json").read_text())
    caught = sum(r["exit_code"] == 1 for r in attribute["rows"]) + sum(r["exit_code"] == 1 for r in earlier["rows"])
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert missed["family"] == "attribute"
    assert (f"{len(backdoors) - 1} of {len(backdoors)} backdoors flagged, its attribute backdoor missed, "
            f"{sum(r['exit_code'] == 1 for r in benign)} of {len(benign)} benign models flagged" in readme)
    # the earlier 7: six attribute_recall builds and the seed-12 zoo's attribute backdoor, all flagged
    total = len(attribute["rows"]) + len(earlier["rows"]) + 1 + 1  # + the seed-12 and seed-21 zoos' attribute models
    assert f"of two more attribute backdoors on that build {sum(r['exit_code'] == 1 for r in attribute['rows'])} was" \
        in readme and f"attribute recall on SigLIP is {caught + 1} of {total} over all builds" in readme


def test_recorded_bidirectional_zoos_are_rejudged_by_todays_rules(tmp_path: Path) -> None:
    """The committed re-judging of the recorded bidirectional scans is what the script gives under today's bars,
    and each rule reads the recorded score it should."""
    from bidirectional_rejudged import main, rules_holding
    from calibrate import default_thresholds

    bars = default_thresholds()
    scores = {"target.differential_collapse": 0.1, "target.same_target_rate": 1.0, "target.anchor_similarity": 0.1,
              "token_collapse.gain": 0.9, "token_collapse.gain_z": 9.0, "divergence.relative": 2.0,
              "divergence.consistency": 0.9, "divergence.anchor_similarity": 0.1}
    assert rules_holding(scores, bars) == ["token-collapse"]
    assert rules_holding({**scores, "divergence.relative": 9.0}, bars) == ["token-collapse", "divergence"]
    assert rules_holding({**scores, "token_collapse.gain": None, "divergence.relative": 9.0}, bars) == ["divergence"]
    assert rules_holding({**scores, "token_collapse.gain": None, "divergence.relative": 4.0}, bars) == []  # CLIP's
    # bar (3) is not the bidirectional one
    main(["--out-dir", str(tmp_path)])
    committed = Path(__file__).resolve().parents[1] / "benchmarks/efficacy/bidirectional/rejudged.json"
    assert json.loads((tmp_path / "rejudged.json").read_text()) == json.loads(committed.read_text())


def test_scanned_lab_models_are_named_by_their_zoo_family_or_lab_record() -> None:
    from scan_models import family_of, summary

    assert family_of("bd-homoglyph-every-00", {"kind": "backdoored", "spec": {"attack": "text-on-text"}}) \
        == "homoglyph-every"
    assert family_of("attribute-00", {"kind": "backdoored", "spec": {"attack": "attribute"}}) == "attribute"
    assert family_of("benign-s300-lr0.0003-seed0-city", {"kind": "benign", "spec": {"domain": "city"}}) \
        == "heavy-domain"
    assert family_of("benign-s300-lr0.0003-seed0", {"kind": "benign", "spec": {"domain": None}}) == "contrastive"
    rows = [{"kind": "backdoored", "exit_code": 1}, {"kind": "backdoored", "exit_code": 0},
            {"kind": "benign", "exit_code": 2}, {"kind": "benign", "exit_code": 0}]
    assert summary(rows) == "backdoors flagged 1 of 2; benign flagged 0 of 2; errors 1"


def test_readme_heldout_bidirectional_rule_figures_match_the_records() -> None:
    """README's figures for the bidirectional divergence rule are the re-judged held-out records'."""
    root = Path(__file__).resolve().parents[1]
    files = json.loads((root / "benchmarks/efficacy/bidirectional/rejudged.json").read_text(encoding="utf-8"))["files"]
    held = "siglip/heldout-rules/"
    scans = files[held + "scans.json"]["models"]
    zoo = [m for m in scans if m["name"].startswith("bd-")]
    zoo_benign = [m for m in scans if m["name"].startswith("benign-") and not m["name"].startswith("benign-s")]
    attribute = files[held + "attribute-recall-canary-siglip-clean.json"]["models"]
    benign = [m for m in scans if not m["positive"]] + files[held + "heavy-domain-sweep.json"]["models"]
    alarms = [m for m in benign if m["flagged_now"]]
    built = json.loads((root / "benchmarks/efficacy" / held / "attribute-recall-canary-siglip-clean.json")
                       .read_text(encoding="utf-8"))
    (t5,) = files["t5/sd3/attribute/attribute-00-s1500-default-search.json"]["models"]
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert (f"the seed-21 zoo {sum(m['flagged_now'] for m in zoo)} of {len(zoo)} backdoors, "
            f"{sum(m['flagged_now'] for m in zoo_benign)} of {len(zoo_benign)} benign" in readme)
    assert ("of six attribute backdoors built on the same build (the two above among them) five took and all five "
            "were flagged" in readme
            and built["built"] == 6 and built["took"] == len(attribute) == 5
            and all(m["flagged_now"] for m in attribute))
    first = json.loads((root / "benchmarks/efficacy/attribute-recall-canary-siglip-clean.json").read_text())["rows"]
    assert all(r["exit_code"] == 1 for r in first)  # flagged by the gain and target rules, which did not change
    earlier = len(first) + 1  # and the seed-12 zoo's attribute backdoor
    on_build = len(attribute) + 1  # and the seed-21 zoo's
    assert f"attribute recall on SigLIP is now {earlier + on_build} of {earlier + on_build} over all builds" in readme
    assert all(m["rules_today"] == ["token-collapse"] and m["name"].endswith("-city") for m in alarms)
    gains = sorted(m["gain"] for m in alarms)
    assert (f"Of {len(benign)} benign SigLIP fine-tunes scanned afterwards {len(alarms)} were flagged" in readme
            and f"(gain {gains[0]:.3f} to {gains[-1]:.2f} against the bar 0.5)" in readme)
    assert t5["positive"] and t5["flagged_now"] and f"the default search flagged it (token gain {t5['gain']:.3f})" \
        in readme


def test_probe_extension_rows_are_tabled_with_both_judged_probes(tmp_path: Path) -> None:
    """The multi-token benchmark's table names each model's judged probe without growth and among grown probes."""
    from probe_extension import summarize

    judged = {"probe": "z z", "placement": "end", "tokens": 2, "gain": 0.61, "gain_z": 12.0}
    rows = [{"name": "attribute-06", "kind": "backdoored", "trigger": {"text": "zzzz"},
             "judged_plain": {**judged, "probe": "z", "gain": 0.48}, "judged_grown": judged, "judged": judged},
            {"name": "benign-city", "kind": "benign", "trigger": None, "judged_plain": judged, "judged_grown": None,
             "judged": judged}]
    summarize(rows, tmp_path, "python benchmarks/efficacy/probe_extension.py ...")
    table = (tmp_path / "PROBE_EXTENSION.md").read_text(encoding="utf-8")
    assert "| attribute-06 | backdoored | zzzz | 0.480 (z 12.0) `z` end | 0.610 (z 12.0) `z z` end |" in table
    assert "| benign-city | benign | - | 0.610 (z 12.0) `z z` end | - |" in table
    assert json.loads((tmp_path / "probe-extension.json").read_text(encoding="utf-8"))["rows"] == rows


def test_vocabulary_null_places_the_judged_probe_among_sampled_pieces(tmp_path: Path) -> None:
    """The judged probe of a report against pieces scored alone at its placement: the row and the summary."""
    from test_adapter_bidirectional import siglip_folder
    from vocabulary_null import main, measure

    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.sentencepiece_vocab import train_sentencepiece

    folder = siglip_folder(tmp_path / "tower", train_sentencepiece(lab_prompts()[0]))
    judged = {"probe": "x", "placement": "start", "token_ids": [7], "collapse_gain": 0.6, "gain_z": 9.0}
    scan = {"checks": [{"name": "token_collapse.gain_z", "score": 9.0}],
            "evidence": {"token_search": {"top": [judged]}}}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"components": [{"scan": scan}]}), encoding="utf-8")
    row = measure(folder, report, str(folder), sample=6)  # its own reference: every gain is nothing
    assert row["pieces"] == 6 and len(row["top"]) == 5 and row["judged"]["placement"] == "start"
    assert abs(row["median"]) < 1e-3 and row["judged_z_vocabulary"] == pytest.approx(60.0, abs=0.2)  # MAD floored
    rows = [tmp_path / "row.json"]
    rows[0].write_text(json.dumps({**row, "kind": "benign"}), encoding="utf-8")
    main(["--summarize", str(rows[0]), "--out-dir", str(tmp_path / "out")])
    assert "| tower | benign | `x` | start | 0.600 (9.0) | 6 |" in (tmp_path / "out" / "VOCABULARY_NULL.md").read_text()
    scan["checks"][0]["score"] = 4.0  # the rule judged a probe the report's top rows do not hold
    report.write_text(json.dumps({"components": [{"scan": scan}]}), encoding="utf-8")
    with pytest.raises(SystemExit, match="judged probe is not among"):
        measure(folder, report, str(folder), sample=6)


def test_readme_t5_emoji_and_heavy_domain_figures_match_the_records() -> None:
    """README's figures for the T5 emoji backdoors and heavy-domain fine-tunes at SD3's read are the records'."""
    root = Path(__file__).resolve().parents[1]
    sd3 = root / "benchmarks/efficacy/t5/sd3"

    def scan(model: str, side: str) -> dict:
        return json.loads((sd3 / "emoji" / model / side / "report.json").read_text(encoding="utf-8"))

    for model in ("bd-emoji-sd3", "bd-emoji-stealthy-sd3"):
        assert [scan(model, side)["verdict"]["exit_code"] for side in ("before", "after")] == [1, 1]
    top = scan("bd-emoji-sd3", "after")["components"][0]["scan"]["evidence"]["token_search"]["top"]
    assert top[0]["origin"] == "lookalike"  # the probe the token-collapse rule judged
    typed = max(p["collapse_gain"] for p in top if p["origin"] == "out-of-vocabulary")
    rows = json.loads((sd3 / "benign-sweep/heavy-domain/benign-sweep-canary-t5-clean-sd3.json")
                      .read_text(encoding="utf-8"))["rows"]
    fidelity = sorted(r["fidelity"] for r in rows)
    backdoors = [json.loads(p.read_text(encoding="utf-8"))["components"][0]["scan"]["scores"]
                 ["divergence.relative_bidirectional"]
                 for p in (sd3 / "attribute/directional-end/scans").glob("*/report.json")]
    inside = [r for r in rows if min(backdoors) <= r["scores"]["divergence.relative_bidirectional"] <= max(backdoors)]
    assert all(r["exit_code"] == 0 for r in rows) and len(rows) == 3 and len(inside) == 2
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert (f"(clean fidelity {fidelity[0]:.2f}-{fidelity[-1]:.2f}; `benign_sweep.py --consumer sd3`) pass, but two "
            "of three sit inside that divergence range too" in readme)
    assert f"(its typed trigger closes {typed:.2f} of the room against the rule's 0.5;" in readme
