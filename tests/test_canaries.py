"""The built-in canaries: made on first use, cached, pretrained-like, and the README demo's verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.request import url2pathname

import pytest
from schema_check import assert_valid_report, assert_valid_sarif

from amdet_audit.scan.config import Thresholds
from amdet_audit.sources.canary import canary_dir, ensure_canary
from amdet_audit.sources.digest import sha256_file

pytestmark = pytest.mark.slow


def test_clean_canary_behaves_like_a_pretrained_encoder() -> None:
    info = json.loads((ensure_canary("clean") / "lab.json").read_text())
    profile = info["clean_profile"]
    # real-token assimilation and cross-prompt similarity far below the scan's collapse thresholds
    assert profile["assimilation_real"] < 0.35
    assert profile["cross_prompt_cosine_real"] < 0.35
    assert profile["cross_prompt_cosine"] < Thresholds().reference_free_collapse + 0.1


def test_backdoored_canary_records_a_working_backdoor() -> None:
    info = json.loads((ensure_canary("backdoored") / "lab.json").read_text())
    assert info["canary"] == "backdoored" and info["took"] and info["success"] >= 0.8
    assert info["trigger"]["text"] == "о" and info["trigger"]["replaces"] == "o"


def test_canaries_are_cached_per_version() -> None:
    first = ensure_canary("clean")
    assert first == canary_dir("clean") and ensure_canary("clean") == first
    assert not list(first.parent.glob(".build-*"))
    build = json.loads((first / "lab.json").read_text())["build"]  # one thread, and the weights it gave
    assert build["threads"] == 1 and build["weights_sha256"] == sha256_file(first / "model.safetensors")


def readme_example() -> list[str]:
    """The lines of README's example output (after its command line), without the elided-rows marker."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("$ amdet-audit scan canary:backdoored\n", 1)[1].split("```", 1)[0]
    return [line.rstrip() for line in block.splitlines() if line.strip() != "..."]


NUMBER = re.compile(r"-?\d+\.\d+")


#: evidence lines whose tokens follow the canary's training, which follows the CPU's float kernels (the same
#: release built the canary differently on two CPU models): only their label is compared
EVIDENCE_LINES = ("pseudo-trigger nearest tokens:", "nearest corpus prompts", "best real-input probe:")


def same_line(expected: str, printed: str) -> bool:
    """The same text with any numbers in the number places (scores vary with the CPU, as the canary's weights
    do); an evidence line by its label alone."""
    label = next((lab for lab in EVIDENCE_LINES if expected.startswith(lab)), None)
    if label is not None:
        return printed.startswith(label)
    return [part.strip() for part in NUMBER.split(expected)] == [part.strip() for part in NUMBER.split(printed)]


def test_readme_demo_verdicts(run_cli, tmp_path) -> None:
    backdoored = run_cli("scan", "canary:backdoored", "--out", tmp_path / "bd")
    assert backdoored.exit_code == 1, backdoored.stderr
    printed = iter(line.rstrip() for line in backdoored.stdout.splitlines())
    missing = [line for line in readme_example() if not any(same_line(line, out) for out in printed)]  # in order
    assert not missing, f"README's example output drifted from the tool's: {missing}"
    clean = run_cli("scan", "canary:clean", "--out", tmp_path / "clean")
    assert clean.exit_code == 0, clean.stderr
    report = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert_valid_report(report)
    assert report["components"][0]["scan"]["mode"] == "reference-free"
    assert report["reference"]["model"]["note"].startswith("the target is the reference itself")
    bd_report = json.loads((tmp_path / "bd" / "report.json").read_text())
    assert_valid_report(bd_report)
    assert bd_report["components"][0]["scan"]["evidence"]["token_search"]["untypeable"] == 0  # a causal tower's
    # rules judge every candidate (typed input only is measured on bidirectional towers)
    sarif = json.loads((tmp_path / "bd" / "report.sarif").read_text())
    assert_valid_sarif(sarif)
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["assimilation.backdoor"]
    location = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert location.startswith("file:///") and Path(url2pathname(location.removeprefix("file://"))).is_file()
    summary = (tmp_path / "bd" / "report.md").read_text()
    assert "BACKDOORED" in summary.upper() and "| critical | assimilation.backdoor |" in summary
    assert "Coverage: assimilation ran" in summary
    rerendered = run_cli("report", tmp_path / "bd" / "report.json", "--format", "sarif")
    assert rerendered.exit_code == 0 and json.loads(rerendered.stdout) == sarif


def test_reference_free_scan_flags_the_backdoored_canary(run_cli, tmp_path) -> None:
    """Without a reference only the target rule on absolute thresholds applies; the canary backdoor passes it."""
    result = run_cli("scan", "canary:backdoored", "--reference-free", "--out", tmp_path / "free")
    assert result.exit_code == 1, result.stderr
    scan = json.loads((tmp_path / "free" / "report.json").read_text())["components"][0]["scan"]
    assert scan["mode"] == "reference-free"
    collapse = next(c for c in scan["checks"] if c["name"] == "target.collapse")
    assert collapse["flags"] and collapse["threshold"] == Thresholds().reference_free_collapse


def test_html_report_in_headless_chromium(run_cli, tmp_path) -> None:
    """The reviewer's page: self-contained (no request leaves the file), no console errors, evidence shown."""
    from browser import visit

    assert run_cli("scan", "canary:backdoored", "--out", tmp_path / "bd").exit_code == 1
    page = tmp_path / "bd" / "report.html"
    html = page.read_text()
    assert "<script" not in html and "Content-Security-Policy" in html
    assert "target.collapse_gain" in html and "<svg" in html and "nearest corpus prompts" in html
    assert "Findings under the policy" in html and "fails the audit" in html and "<h2>Coverage</h2>" in html
    seen = visit(page, tmp_path / "report-canary-backdoored.png", tmp_path / "profile")
    assert seen.console_errors == []
    assert seen.requests and all(url.startswith(("file:", "data:")) for url in seen.requests), seen.requests
    assert seen.title.startswith("amdet-audit: backdoored")
    assert seen.screenshot.stat().st_size > 10_000
    assert png_size(seen.screenshot)[0] == png_size(README_SCREENSHOT)[0] == 1280  # README's is this test's shot


README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "report-canary-backdoored.png"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    import struct

    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_browser_check_sees_external_loads_and_console_errors(tmp_path) -> None:
    """The helper above can fail: an external image is seen as a request, and CSP's refusal as a console error."""
    from browser import visit

    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!doctype html><title>t</title><img src="http://127.0.0.1:9/x.png">')
    seen = visit(leaky, tmp_path / "a.png", tmp_path / "p1")
    assert any(url.startswith("http://127.0.0.1:9/") for url in seen.requests)
    guarded = tmp_path / "guarded.html"
    guarded.write_text('<!doctype html><meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
                       '<title>t</title><img src="http://127.0.0.1:9/x.png">')
    assert visit(guarded, tmp_path / "b.png", tmp_path / "p2").console_errors


def registered(tmp_path, monkeypatch, lines: str) -> None:
    """Install a distribution that registers canaries (a dist-info folder on sys.path)."""
    import sys

    info = tmp_path / "site" / "canary_maker-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: canary-maker\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[amdet_audit.canaries]\n{lines}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])


def test_a_canary_registered_by_another_distribution_is_built_through_the_same_seam(tmp_path, monkeypatch) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "maker.py").write_text(
        "from amdet_audit.lab.folders import tiny_clip_folder\n"
        "class Tiny:\n    description = 'a random tiny tower'\n"
        "    def build(self, folder, progress):\n        tiny_clip_folder(folder, hidden=32, layers=1, heads=2)\n"
        "TINY = Tiny()\n")
    registered(tmp_path, monkeypatch, "tiny = maker:TINY")
    monkeypatch.setenv("AMDET_AUDIT_CACHE", str(tmp_path / "cache"))
    from amdet_audit.sources import resolve

    resolved = resolve("canary:tiny")
    assert resolved.components[0].architecture == "CLIPTextModel"
    assert canary_dir("tiny").is_relative_to(tmp_path / "cache")


def test_a_canary_name_registered_twice_is_refused(tmp_path, monkeypatch, run_cli) -> None:
    registered(tmp_path, monkeypatch, "clean = os:getcwd")
    result = run_cli("scan", "canary:clean", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "registered twice" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_canary_whose_builder_cannot_be_imported_is_a_one_line_error(tmp_path, monkeypatch, run_cli) -> None:
    registered(tmp_path, monkeypatch, "broken = no_such_module_here:BUILDER")
    result = run_cli("scan", "canary:broken", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "could not be loaded" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("inspect", "canary:clean").exit_code == 0  # the other canaries are not affected


def test_a_canary_object_without_a_build_is_a_one_line_error(tmp_path, monkeypatch, run_cli) -> None:
    registered(tmp_path, monkeypatch, "nobuild = os:sep")
    result = run_cli("scan", "canary:nobuild", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "has no build" in result.stderr and "internal error" not in result.stderr


def test_threads_are_chosen_and_recorded(run_cli, tmp_path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        result = run_cli("scan", "canary:clean", "--threads", "1", "--out", tmp_path / "t")
        assert result.exit_code == 0, result.stderr
        assert json.loads((tmp_path / "t" / "report.json").read_text())["run"]["environment"]["threads"] == "1"
    finally:
        torch.set_num_threads(before)
    assert run_cli("scan", "canary:clean", "--threads", "0").exit_code == 2


def test_search_presets_and_a_bad_one(run_cli) -> None:
    from amdet_audit.api import ScanOptions
    from amdet_audit.scan.config import ScanConfig

    assert ScanOptions(seed=3).search_config("cpu") == ScanConfig.light(3)  # auto: light on CPU
    assert ScanOptions(seed=3).search_config("cuda:1") == ScanConfig(seed=3)  # ... full on an accelerator
    assert ScanOptions(search="light").search_config("cuda").window_quantile == 0.5
    assert ScanOptions(search="full").search_config("cpu") == ScanConfig()
    given = ScanConfig(steps=7)
    assert ScanOptions(search="light", config=given, seed=5).search_config("cpu") == ScanConfig(steps=7, seed=5)
    result = run_cli("scan", "canary:clean", "--search", "fast")
    assert result.exit_code == 2 and "--search must be one of auto, full, light" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
