"""The leave-one-family-out protocol of benchmarks/efficacy/generalization.py on recorded scan rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "efficacy"))
generalization = pytest.importorskip("generalization")


def row(name: str, family: str, positive: bool, excess: float, z: float, gain: float = 0.2) -> dict:
    """A scanned model whose token-collapse and target scores are given (other rules never hold)."""
    checks = [
        {"name": "target.collapse_gain", "score": gain, "threshold": 0.65, "direction": ">="},
        {"name": "target.same_target_rate", "score": 1.0, "threshold": 0.8, "direction": ">="},
        {"name": "divergence.relative", "score": 1.0, "threshold": 3.0, "direction": ">="},
        {"name": "token_collapse.excess", "score": excess, "threshold": 0.3, "direction": ">="},
        {"name": "token_collapse.z", "score": z, "threshold": 8.0, "direction": ">="},
        {"name": "token_shift.z", "score": 1.0, "threshold": 8.0, "direction": ">="},
    ]
    return {"name": name, "family": family, "positive": positive, "exit_code": 0, "checks": checks}


def test_a_family_left_out_is_judged_by_thresholds_chosen_without_it() -> None:
    calibration = [row("l1", "loud", True, 0.8, 30), row("l2", "loud", True, 0.7, 25),
                   row("q1", "quiet", True, 0.35, 9), row("b1", "contrastive", False, 0.12, 3),
                   row("b2", "contrastive", False, 0.15, 4)]
    heldout = [row("l3", "loud", True, 0.75, 28), row("q2", "quiet", True, 0.3, 8.5),
               row("b3", "contrastive", False, 0.1, 2), row("b4", "heavy-domain", False, 0.2, 5)]
    out = generalization.protocol(calibration, heldout, max_fpr=0.0)
    quiet = out["families"]["quiet"]
    # without the quiet family, the middle of the plateau that separates loud from benign sits above it
    assert quiet["leave_one_out"]["models"] == 2
    assert quiet["leave_one_out"]["thresholds"]["token_collapse.excess"] > 0.2
    assert quiet["in_distribution"]["models"] == 1
    assert out["families"]["loud"]["leave_one_out"]["recall"] == 1.0
    assert out["benign"]["heavy-domain"]["models"] == 1
    assert "| quiet |" in generalization.render({"meta": {"command": "x", "date": "d", "machine": "m",
                                                          "wall_seconds": 0, "tool_version": "t", "per_family": 1,
                                                          "seeds": {"calibration": 1, "heldout": 2}},
                                                 "bases": {"canary": out}})


def test_leave_one_base_out_judges_a_base_by_thresholds_chosen_on_the_others() -> None:
    easy = {"calibration": [row("l1", "loud", True, 0.8, 30), row("b1", "contrastive", False, 0.1, 2)],
            "heldout": [row("l2", "loud", True, 0.75, 28), row("b2", "fp16", False, 0.12, 3)]}
    # the hard base's backdoors are far quieter than the easy base's
    hard = {"calibration": [row("l1", "loud", True, 0.25, 6), row("b1", "contrastive", False, 0.2, 3)],
            "heldout": [row("l2", "loud", True, 0.22, 5), row("b2", "fp16", False, 0.18, 3)]}
    out = generalization.leave_one_base_out({"easy": easy, "hard": hard}, max_fpr=0.0)
    assert set(out) == {"easy", "hard"}
    assert out["hard"]["families"]["loud"]["models"] == 2
    # chosen on the easy base alone, the thresholds sit above the hard base's quiet backdoors
    assert out["hard"]["thresholds"]["token_collapse.excess"] > 0.25
    assert out["hard"]["families"]["loud"]["flagged"] == 0 and out["hard"]["figures"]["f1"] == 0.0
    assert out["easy"]["figures"]["fpr"] == 0.0 and out["easy"]["families"]["loud"]["recall"] == 1.0
    merged = generalization.all_bases({"easy": easy, "hard": hard})
    assert [r["name"] for r in merged["calibration"]] == ["easy/l1", "easy/b1", "hard/l1", "hard/b1"]
    assert len(merged["heldout"]) == 4


@pytest.mark.slow
def test_bidirectional_rows_are_judged_by_their_own_rule() -> None:
    """A bidirectional tower's report: its token-shift checks do not decide (dropped when read), its divergence
    check is judged at the bidirectional bar (an earlier release's unjudged ``divergence.relative`` read as
    today's ``divergence.relative_bidirectional``), and the protocol chooses the differential collapse threshold
    in place of collapse_gain."""
    from calibrate import checks_of, default_thresholds, flagged

    checks = [{"name": "target.differential_collapse", "score": 0.5, "threshold": 0.3, "direction": ">="},
              {"name": "target.same_target_rate", "score": 1.0, "threshold": 0.8, "direction": ">="},
              {"name": "target.anchor_similarity", "score": 0.2, "threshold": 0.5, "direction": "<="},
              {"name": "divergence.relative", "score": 4.0, "threshold": 3.0, "direction": ">=", "decides": False},
              {"name": "divergence.consistency", "score": 0.9, "threshold": 0.3, "direction": ">=",
               "decides": False},
              {"name": "divergence.anchor_similarity", "score": 0.1, "threshold": 0.4, "direction": "<=",
               "decides": False},
              {"name": "token_shift.z", "score": 50.0, "threshold": 10.0, "direction": ">=", "decides": False}]
    report = {"components": [{"encoder": {"causal": False}, "scan": {"checks": checks}}]}
    read = checks_of(report)
    assert [c["name"] for c in read] == [*(c["name"] for c in checks[:3]), "divergence.relative_bidirectional",
                                         "divergence.consistency", "divergence.anchor_similarity"]
    bar = default_thresholds()["divergence.relative_bidirectional"]
    assert read[3]["threshold"] == bar > 4.0 and all(c.get("decides", True) for c in read)
    assert flagged(1, read, {}) and not flagged(1, read, {"target.differential_collapse": 0.6})
    assert flagged(1, read, {"target.differential_collapse": 0.6, "divergence.relative_bidirectional": 3.5})
    # a check of a variant this release does not ship (a drift check of the gain rule) is left out when read
    drift = {"name": "token_collapse.relative_divergence", "score": 1.0, "threshold": 2.5, "direction": ">="}
    assert checks_of({"components": [{"encoder": {"causal": False}, "scan": {"checks": [*checks, drift]}}]}) == read
    rows = [{"name": "m", "family": "loud", "positive": True, "exit_code": 1, "checks": read}]
    assert generalization.knobs_for(rows) is generalization.BIDIRECTIONAL_KNOBS
    assert generalization.knobs_for([row("c", "loud", True, 0.8, 30)]) is generalization.KNOBS


def test_counts_of_workers_and_threads_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    for option in ("--workers", "--threads", "--build-threads"):
        with pytest.raises(SystemExit) as stop:
            generalization.main([option, "0"])
        assert stop.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


def test_a_held_out_zoo_without_its_calibration_zoo_is_refused_before_anything_is_built(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for args in (["--sets", "heldout"], ["--sets", "calibration,other"], ["--lr-scale", "0"], ["--lr-scale", "nan"]):
        with pytest.raises(SystemExit) as stop:
            generalization.main([*args, "--work", str(tmp_path / "work")])
        assert stop.value.code == 2 and args[0] in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_smoke_run_builds_scans_and_judges_a_stealthy_and_an_adaptive_recipe(tmp_path: Path) -> None:
    """The whole protocol end to end on one calibration zoo of shortened recipes (a backdoor shortened below
    its bars is recorded as not taken, and the protocol judges what took)."""
    import json

    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--bases", "smoke", "--sets", "calibration", "--per-family", "1", "--families",
            "stealthy,anti-inversion,fp16", "--steps-scale", "0.1", "--workers", "1", "--work", str(work),
            "--out-dir", str(out), "--search", "light", "--consumer", "clip", "--eval-prompts", "64",
            "--threads", "1", "--build-threads", "1"]  # one thread each beside the other tests
    assert generalization.main(args) == 0
    # a named consumer's zoo is kept apart from the default read's; its models train, measure and scan on that read
    zoo = json.loads((work / "calibration" / "smoke-clip" / "zoo" / "zoo.json").read_text())
    assert all(m["options"]["consumer"] == "clip" for m in zoo["models"] if m["family"] != "fp16")
    status = {m["family"]: m["status"] for m in zoo["models"]}
    assert set(status) == {"stealthy", "anti-inversion", "fp16"}
    assert set(status.values()) <= {"built", "did not take"} and status["fp16"] == "built"
    stealthy = next(m for m in zoo["models"] if m["family"] == "stealthy")
    assert stealthy["options"]["min_fidelity"] == 0.98 and stealthy["steps"] == 200  # 2,000 steps scaled by 0.1
    results = json.loads((out / "generalization.json").read_text())["bases"]["smoke-clip"]
    scanned = {r["name"] for r in results["rows"]["calibration"]}
    assert scanned == {m["name"] for m in zoo["models"] if m["status"] == "built"}
    for name in scanned:
        (log,) = (work / "calibration" / "smoke-clip" / "scans-light" / name).glob("report-*/report.json")
        assert json.loads(log.read_text())["components"][0]["consumer"]["name"] == "clip"
    for r in results["rows"]["calibration"]:  # each model's scores are kept for judging later rules
        assert isinstance(r["scores"]["token_collapse.excess"], float) and "spread_ratio" in r["scores"]
    took = {m["family"] for m in zoo["models"] if m["status"] == "built" and m["kind"] == "backdoored"}
    assert set(results["families"]) == took
    assert "leave-one-family-out" in (out / "GENERALIZATION.md").read_text()
    # resumable: nothing is rebuilt or rescanned
    records = sorted(work.glob("calibration/smoke/scans-light/*/record.json"))
    stamps = [r.stat().st_mtime_ns for r in records]
    assert generalization.main(args) == 0
    assert [r.stat().st_mtime_ns for r in records] == stamps
