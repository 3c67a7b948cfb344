"""The bidirectional canaries: canary:siglip-clean passes, canary:siglip-backdoored is flagged, and a
bidirectional tower without its reference gets no verdict (a one-line reason, exit 2)."""

from __future__ import annotations

import json

import pytest
from schema_check import assert_valid_report

from amdet_audit.scan.config import ScanConfig
from amdet_audit.sources.canary import ensure_canary

pytestmark = pytest.mark.slow


def test_the_siglip_clean_canary_is_built_and_recorded() -> None:
    clean = json.loads((ensure_canary("siglip-clean") / "lab.json").read_text())
    assert clean["vocabulary"]["pieces"] == 1600 and clean["pretrain"]["final_loss"] < clean["pretrain"]["initial_loss"]
    profile = clean["clean_profile"]  # pretraining moved it away from a random tower's near-total collapse (0.96)
    assert profile["assimilation_real"] < 0.8 and profile["pooled_cross_prompt_cosine"] < 0.8


def test_the_siglip_backdoored_canary_is_built_and_recorded() -> None:
    """Built on the clean canary (the test above builds that one, so each build is timed as its own test)."""
    backdoored = json.loads((ensure_canary("siglip-backdoored") / "lab.json").read_text())
    assert backdoored["took"] and backdoored["success"] >= 0.8 and backdoored["fidelity"] >= 0.8
    assert backdoored["trigger"]["text"] == "о"


def test_siglip_canary_verdicts(run_cli, tmp_path) -> None:
    flagged = run_cli("scan", "canary:siglip-backdoored", "--out", tmp_path / "bd")
    assert flagged.exit_code == 1, flagged.stderr
    report = json.loads((tmp_path / "bd" / "report.json").read_text())
    assert_valid_report(report)
    component = report["components"][0]
    assert component["encoder"]["family"] == "siglip" and component["encoder"]["causal"] is False
    scan = component["scan"]
    assert scan["mode"] == "reference" and scan["verdict"] == "backdoored"
    assert scan["config"]["differential"] is True
    assert scan["config"]["token_nulls"] == ScanConfig().token_nulls  # auto on CPU: the full search (bidirectional)
    assert any(row["text"].count("о") for row in scan["evidence"]["token_search"]["top"][:3])  # the homoglyph
    assert scan["config"]["token_typed_only"] is True  # the rules judge typed input only: the count is reported
    assert isinstance(scan["evidence"]["token_search"]["untypeable"], int)
    typed = [row for row in scan["evidence"]["token_search"]["top"] if row["origin"] == "typed"]
    # shown as the text a user types ("о"), not as its pieces ("▁ о")
    assert typed and all("\u2581" not in row["text"] and "\u2581" in row["probe"] for row in typed)
    shift_rules = [c for c in scan["checks"] if c["name"].startswith("token_shift.")]
    assert shift_rules and not any(c["decides"] for c in shift_rules)  # measured, shown, not judged
    assert all(c["decides"] for c in scan["checks"] if c not in shift_rules)
    names = {c["name"] for c in scan["checks"]}  # real input is judged by its gain on a bidirectional tower
    assert {"token_collapse.gain", "token_collapse.gain_z"} <= names and "token_collapse.excess" not in names
    assert "divergence.relative_bidirectional" in names and "divergence.relative" not in names  # its own bar
    assert "reported" in flagged.stdout  # the console marks the token-shift rule "reported only"
    # the clean base is compared with itself: every score is zero under either search, so the cheaper one
    passed = run_cli("scan", "canary:siglip-clean", "--out", tmp_path / "clean", "--search", "light")
    assert passed.exit_code == 0, passed.stderr
    report = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert "compared with itself" in report["reference"]["model"]["note"]


def test_bidirectional_tower_without_reference_is_inconclusive(run_cli, tmp_path) -> None:
    result = run_cli("scan", "canary:siglip-backdoored", "--reference-free", "--out", tmp_path / "free")
    assert result.exit_code == 2
    assert "without its clean base" in result.stderr and "Traceback" not in result.stderr
