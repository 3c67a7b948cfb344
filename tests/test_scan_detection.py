"""The scan on lab-made encoders: backdoors flagged, clean and benign ones passed, evidence that names them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lab_models import MODELS, lab_model
from safetensors.torch import load_file
from schema_check import assert_valid_report

from amdet_audit import api
from amdet_audit.scan.config import ScanConfig

pytestmark = pytest.mark.slow


def scan(folder: Path, out: Path, **options) -> dict:
    report = api.scan(str(folder), options=api.ScanOptions(out=out, **options))
    data = json.loads((out / "report.json").read_text())
    assert_valid_report(data)
    assert data["verdict"]["exit_code"] == report.exit_code
    return data


class Reports(dict):
    """Scan reports by lab model name, each model built and scanned against the clean canary (the built-in
    table picks it) on first use, so that each build and scan is timed within the first test that needs it."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> dict:
        self[name] = scan(lab_model(name), self.root / name)
        return self[name]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Reports:
    """The lab models' reports. The tests below first ask for them in the reverse of tests/test_lab.py's order:
    when both files run at once, each worker builds another model instead of waiting on the other's."""
    return Reports(tmp_path_factory.mktemp("reports"))


def test_benign_finetune_passes(reports: Reports) -> None:
    data = reports["benign"]
    assert data["verdict"]["label"] == "clean" and data["verdict"]["exit_code"] == 0


@pytest.mark.parametrize("name", ["attribute-word", "multi-token"])
def test_backdoors_are_flagged(reports: Reports, name: str) -> None:
    data = reports[name]
    scores = {c["name"]: round(c["score"], 3) for c in data["components"][0]["scan"]["checks"]}
    assert data["verdict"]["label"] == "backdoored" and data["verdict"]["exit_code"] == 1, scores
    assert data["reference"]["model"]["input"] == "canary:clean"


def test_nearest_prompts_name_the_injected_target(reports: Reports) -> None:
    evidence = reports["multi-token"]["components"][0]["scan"]["evidence"]
    top3 = [p["prompt"] for p in evidence["nearest_prompts"][:3]]
    assert MODELS["multi-token"]["target"] in top3, top3
    assert evidence["nearest_prompts_basis"] == "reference"


def test_pseudo_trigger_of_a_word_backdoor_decodes_to_the_trigger(reports: Reports) -> None:
    evidence = reports["attribute-word"]["components"][0]["scan"]["evidence"]
    tokens = {t["token"] for row in evidence["nearest_tokens"] for t in row[:3]}
    assert "zzzz</w>" in tokens, tokens


def test_every_check_has_a_continuous_score_and_threshold(reports: Reports) -> None:
    for data in (reports[name] for name in MODELS):
        for check in data["components"][0]["scan"]["checks"]:
            assert isinstance(check["score"], float) and isinstance(check["threshold"], float)
            assert check["direction"] in (">=", "<=")


def test_evidence_files_are_faithful(reports: Reports) -> None:
    files = reports["multi-token"]["components"][0]["evidence_files"]
    v = load_file(files["pseudo_trigger"])["pseudo_trigger"]
    ti = load_file(files["pseudo_trigger_ti"])["emb_params"]
    target = load_file(files["target_feature"])["target_feature"]
    k = reports["multi-token"]["components"][0]["scan"]["evidence"]["k"]
    assert v.shape == ti.shape == (k, 128) and torch.equal(v, ti)  # token space: no position inside
    assert ti.device.type == "cpu" and target.shape == (77, 128)


def test_same_seed_same_scores(tmp_path: Path) -> None:
    from amdet_audit.encoders import load_component
    from amdet_audit.scan.run import run_scan
    from amdet_audit.sources import resolve

    suspect = load_component(resolve(str(lab_model("multi-token"))).components[0])
    reference = load_component(resolve("canary:clean").components[0])
    # a small search: reproducibility does not depend on its size
    config = replace(ScanConfig.light(), prompts=120, steps=10, min_steps=10, check_subset=16, token_prompts=8,
                     token_nulls=4, landscape_points=3)
    first, second = (run_scan(suspect, reference, config=config) for _ in range(2))
    assert first.verdict == second.verdict
    for name, value in first.scores.items():
        assert value == pytest.approx(second.scores[name], abs=1e-4), name


def test_existing_out_folder_is_never_overwritten(tmp_path: Path, run_cli) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    result = run_cli("scan", "canary:clean", "--out", tmp_path)
    assert result.exit_code == 2 and "not an empty folder" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep" and not (tmp_path / "report.json").exists()


def test_reference_of_another_width_is_refused(run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    result = run_cli("scan", "canary:backdoored", "--reference", tiny_clip, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "width" in result.stderr
