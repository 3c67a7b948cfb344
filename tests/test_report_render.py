"""`amdet-audit report`: re-rendering a saved report.json, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path


def test_missing_report_file(run_cli, tmp_path: Path) -> None:
    result = run_cli("report", tmp_path / "nope.json")
    assert result.exit_code == 2 and "no such report file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_not_a_report(run_cli, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    result = run_cli("report", other, "--format", "md")
    assert result.exit_code == 2 and "not an amdet-audit report.json" in result.stderr


def test_unknown_format_and_existing_out(run_cli, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert run_cli("report", report, "--format", "pdf").exit_code == 2
    keep = tmp_path / "keep.sarif"
    keep.write_text("mine")
    result = run_cli("report", report, "--out", keep)
    assert result.exit_code == 2 and "already exists" in result.stderr and keep.read_text() == "mine"


def test_the_reproduce_command_writes_to_a_new_folder() -> None:
    from amdet_audit.report.html import reproduce_command

    report = {"run": {"argv": ["scan", "canary:backdoored", "--out", "r1", "--seed", "3", "--out=r2"]}}
    assert reproduce_command(report) == "amdet-audit scan canary:backdoored --seed 3"


def test_plots_have_axes_readable_legends_and_a_reading() -> None:
    from amdet_audit.report.html import component_plots

    scan = {"series": {"loss_curves": {"collapse/k2": [0.0, -0.5, -0.7], "<b>odd</b>": [1.0, 0.5]},
                       "landscape": {"coords": [-0.5, 0.0, 0.5], "loss": [[3, 2, 3], [2, 1, 2], [3, 2, 3]],
                                     "eigenvalues": [2.0, 1.0, -0.5], "positive_share": 0.67}}}
    figs = component_plots(scan)
    assert "collapse objective, 2 vectors" in figs["loss"] and "optimisation step" in figs["loss"]
    assert "&lt;b&gt;odd&lt;/b&gt;" in figs["loss"] and "<b>odd" not in figs["loss"]  # every label escaped
    assert all("<figcaption>" in f and "<svg" in f for f in figs.values())
    assert "steepest descent" in figs["landscape"] and ">-0.5<" in figs["landscape"] and "red ring" in figs["landscape"]
    assert "67% positive" in figs["spectrum"]
    assert component_plots({"series": {}}) == {"loss": "", "landscape": "", "spectrum": ""}


def test_sarif_locations_are_where_the_files_really_are() -> None:
    from amdet_audit.report.sarif import artifact_uri

    def uri(kind: str, given: str, root: str = "/cache/x", sha: str | None = None) -> str:
        return artifact_uri({"target": {"kind": kind, "input": given, "root": root, "commit_sha": sha}},
                            "text_encoder/config.json")

    assert uri("local", "models/my sd") == "models/my%20sd/text_encoder/config.json"
    assert uri("local", ".") == "text_encoder/config.json"
    assert uri("file", "ckpt/sd#1.safetensors") == "ckpt/sd%231.safetensors"
    assert uri("hub", "hf://org/name@v1", sha="a" * 40) == \
        f"https://huggingface.co/org/name/blob/{'a' * 40}/text_encoder/config.json"
    assert uri("hub", "org/name@v1") == "https://huggingface.co/org/name/blob/v1/text_encoder/config.json"
    assert uri("canary", "canary:backdoored", root="/home/u/.cache/amdet audit/c") == \
        "file:///home/u/.cache/amdet%20audit/c/text_encoder/config.json"
    assert uri("local", "/models/sd") == "file:///models/sd/text_encoder/config.json"
    assert uri("file", "/ckpt/sd.safetensors") == "file:///ckpt/sd.safetensors"
    assert artifact_uri({"target": {"kind": "hub", "input": "org/name", "root": "/c", "commit_sha": "b" * 40}},
                        ".") == f"https://huggingface.co/org/name/tree/{'b' * 40}"
    assert artifact_uri({"target": {"kind": "hub", "input": "org/name", "root": "/c", "commit_sha": None}},
                        "/tmp/tok dir") == "file:///tmp/tok%20dir"
