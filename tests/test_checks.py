"""File checks (serialization, remote code, tokenizer), the plugin manager, and how findings fold into verdicts."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from schema_check import assert_valid_report, assert_valid_sarif

from amdet_audit.audit.gate import apply_policy
from amdet_audit.audit.policy import load_policy
from amdet_audit.checks.base import CheckContext, CheckResult, Finding
from amdet_audit.checks.hygiene import RemoteCodeCheck, TokenizerCheck
from amdet_audit.checks.serialization import SerializationCheck, analyse_file
from amdet_audit.errors import UsageError
from amdet_audit.hookspecs import hookimpl
from amdet_audit.plugins import make_manager, plugin_infos, registered_checks, run_checks
from amdet_audit.sources import resolve


class Payload:
    """Unpickling this runs a shell command (it is only ever parsed here, never loaded)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model_folder(tiny_clip: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_clip, folder)
    return folder


def context(folder: Path) -> CheckContext:
    return CheckContext(target=resolve(str(folder)))


def test_pickle_beside_safetensors_is_reported_and_unsafe_imports_found(model_folder: Path, tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, model_folder / "pytorch_model.bin")  # an ordinary torch checkpoint
    marker = tmp_path / "ran"
    (model_folder / "extra.pt").write_bytes(pickle.dumps(Payload(marker)))
    result = SerializationCheck().run(context(model_folder))
    by_rule = {(f.rule, f.location): f for f in result.findings}
    assert by_rule[("serialization.pickle-file", "pytorch_model.bin")].severity == "medium"
    assert ("serialization.unsafe-import", "pytorch_model.bin") not in by_rule  # torch's own globals are fine
    unsafe = by_rule[("serialization.unsafe-import", "extra.pt")]
    assert unsafe.severity == "critical" and "system" in unsafe.message
    assert not marker.exists()  # parsed, never run
    assert result.scores["pickle_files"] == 2.0


@pytest.mark.parametrize("protocol", range(6))
def test_pickle_imports_are_read_for_every_protocol(protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "payload.pkl"
    path.write_bytes(pickle.dumps(Payload(tmp_path / "ran"), protocol=protocol))
    analysis = analyse_file(path)
    assert [g for _, g in analysis.dangerous] == ["posix.system"] and not analysis.problems


def test_a_pickle_that_cannot_be_parsed_is_a_high_finding(model_folder: Path) -> None:
    (model_folder / "broken.pkl").write_bytes(b"(Vunterminated")
    result = SerializationCheck().run(context(model_folder))
    assert result.status == "ran"
    unparsed = [f for f in result.findings if f.rule == "serialization.unanalysable"]
    assert unparsed and unparsed[0].severity == "high" and "could not be fully analysed" in unparsed[0].message


def test_remote_code_is_a_high_finding(model_folder: Path) -> None:
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "m.Model"}}))
    (model_folder / "m.py").write_text("import os\n")
    result = RemoteCodeCheck().run(context(model_folder))
    assert result.findings and all(f.severity == "high" for f in result.findings)


def test_tokenizer_added_tokens_that_look_like_triggers(model_folder: Path) -> None:
    added = {"cat\u200b": 49408, "p\u0430inting": 49409, "<style-x>": 49410}  # zero-width, Cyrillic a, plain
    (model_folder / "added_tokens.json").write_text(json.dumps(added))
    result = TokenizerCheck().run(context(model_folder))
    rules = {f.rule: f for f in result.findings}
    assert rules["tokenizer.invisible-token"].severity == "high"
    assert rules["tokenizer.mixed-script-token"].severity == "medium"
    assert rules["tokenizer.added-token"].severity == "info" and result.scores["added_tokens"] == 3.0


def test_tokenizer_check_skips_without_tokenizer(model_folder: Path) -> None:
    target = resolve(str(model_folder))
    bare = type(target)(**{**target.__dict__, "components": [
        type(c)(**{**c.__dict__, "tokenizer_path": None}) for c in target.components]})
    result = TokenizerCheck().run(CheckContext(target=bare))
    assert result.status == "skipped" and result.reason


class Broken:
    id, version, description = "broken", "0", "raises"

    def run(self, context: CheckContext) -> CheckResult:
        raise RuntimeError("boom")


class BrokenPlugin:
    @hookimpl
    def amdet_audit_register_checks(self, register) -> None:
        register(Broken())


def test_a_check_that_raises_is_an_error_not_a_pass(model_folder: Path) -> None:
    pm = make_manager(third_party=False)
    pm.register(BrokenPlugin(), name="broken-plugin")
    clean = [{"name": "model", "scan": {"verdict": "clean", "mode": "reference", "reasons": []}}]
    scanned = CheckContext(target=resolve(str(model_folder)), components=clean)
    results = {r.check: r for r in run_checks(pm, scanned)}
    assert results["broken"].status == "error" and "boom" in results["broken"].reason
    assert results["broken"].plugin == "broken-plugin" and results["serialization"].plugin == "builtin"
    folded = apply_policy({"input": "x", "files": []}, [r.to_dict() for r in results.values()], load_policy())
    assert folded["verdict"]["exit_code"] == 2 and any("did not complete" in r for r in folded["verdict"]["reasons"])


class Trojan:
    """A third-party check that reports what the scan reports for a backdoored component."""

    id, version, description = "acme-trojan", "1.0", "test detector"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def run(self, context: CheckContext) -> CheckResult:
        return CheckResult(self.id, self.version, "ran", [
            Finding("acme-trojan.trigger", "critical", "model: backdoored: backdoored because", component="model",
                    kind=self.kind, details=("backdoored because",))])


class TrojanPlugin:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    @hookimpl
    def amdet_audit_register_checks(self, register) -> None:
        register(Trojan(self.kind))


def test_a_third_party_critical_finding_fails_an_audit_as_a_scan_backdoor_does(model_folder: Path) -> None:
    from amdet_audit.report.sarif import results_of

    target = resolve(str(model_folder))
    record = target.to_dict()
    policy = load_policy()
    scan_backdoor = [{"name": "model", "scan": {"verdict": "backdoored", "mode": "reference",
                                                "reasons": ["backdoored because"]}}]
    by_scan = apply_policy(record, [r.to_dict() for r in run_checks(
        make_manager(third_party=False), CheckContext(target=target, components=scan_backdoor))], policy)
    clean = [{"name": "model", "scan": {"verdict": "clean", "mode": "reference", "reasons": []}}]
    for kind in ("backdoor", "finding"):
        pm = make_manager(third_party=False)
        pm.register(TrojanPlugin(kind), name="acme")
        checks = [r.to_dict() for r in run_checks(pm, CheckContext(target=target, components=clean))]
        by_plugin = apply_policy(record, checks, policy)
        assert [f["blocking"] for f in by_plugin["findings"] if f["check"] == "acme-trojan"] == [True]
        assert by_plugin["verdict"]["exit_code"] == by_scan["verdict"]["exit_code"] == 1
        assert by_plugin["verdict"]["status"] == by_scan["verdict"]["status"] == "fail"
        if kind == "backdoor":  # the same verdict, word for word
            assert by_plugin["verdict"] == by_scan["verdict"]
        else:
            assert by_plugin["verdict"]["label"] == "findings"
        report = {"target": {**record, "input": "x"}, "findings": by_plugin["findings"]}
        assert [r["level"] for r in results_of(report)] == ["error"]


def test_duplicate_check_ids_are_refused() -> None:
    pm = make_manager(third_party=False)
    pm.register(BrokenPlugin(), name="a")
    pm.register(BrokenPlugin(), name="b")
    with pytest.raises(UsageError, match="registered by both"):
        registered_checks(pm)


def test_unknown_plugin_selection_is_a_usage_error(run_cli, tiny_clip: Path) -> None:
    result = run_cli("scan", tiny_clip, "--plugins", "no-such-plugin")
    assert result.exit_code == 2 and "not installed: no-such-plugin" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_plugins_list(run_cli) -> None:
    result = run_cli("plugins", "list", "--format", "json")
    assert result.exit_code == 0
    builtin = json.loads(result.stdout)[0]
    assert builtin["name"] == "builtin" and builtin["checks"] == ["assimilation", "serialization", "remote-code",
                                                                  "tokenizer", "weights-diff"]
    assert plugin_infos(make_manager())[0].distribution == "amdet-audit"


@pytest.mark.slow
def test_scan_fails_on_a_critical_finding_even_when_the_encoder_is_clean(run_cli, tmp_path: Path) -> None:
    from amdet_audit.sources.canary import ensure_canary

    folder = tmp_path / "clean-with-payload"
    shutil.copytree(ensure_canary("clean"), folder)
    marker = tmp_path / "ran"
    (folder / "optimizer.pt").write_bytes(pickle.dumps(Payload(marker)))
    result = run_cli("scan", folder, "--reference", "canary:clean", "--out", tmp_path / "report", "--exit-zero")
    assert result.exit_code == 0, result.stderr  # --exit-zero: report only; the report keeps the verdict
    assert "CRITICAL serialization" in result.stdout and not marker.exists()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert_valid_report(report)
    assert report["components"][0]["scan"]["verdict"] == "clean"  # the encoder itself is fine
    assert report["verdict"]["status"] == "fail" and report["verdict"]["exit_code"] == 1
    assert report["verdict"]["label"] == "findings" and "FINDINGS" in result.stdout
    assert report["plugins"][0]["name"] == "builtin"
    assert [c["check"] for c in report["checks"]] == ["assimilation", "serialization", "remote-code", "tokenizer",
                                                      "weights-diff"]
    scan_check = report["checks"][0]  # the scan: clean (an info note: the canary is its own reference)
    assert scan_check["status"] == "ran"
    assert [f["rule"] for f in scan_check["findings"]] == ["assimilation.reference-free"]
    diff = next(c for c in report["checks"] if c["check"] == "weights-diff")
    assert diff["status"] == "ran" and diff["scores"]["model:max_relative_change"] == 0.0  # same weights
    sarif = json.loads((tmp_path / "report" / "report.sarif").read_text())
    assert_valid_sarif(sarif)
    results = {r["ruleId"]: r for r in sarif["runs"][0]["results"]}
    assert set(results) == {"serialization.pickle-file", "serialization.unsafe-import"}  # the scan itself is clean
    assert results["serialization.unsafe-import"]["level"] == "error"
    assert results["serialization.unsafe-import"]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] \
        .endswith("/optimizer.pt")


def test_weights_diff_names_the_moved_layer_and_token(model_folder: Path, tiny_clip: Path) -> None:
    from safetensors.torch import load_file, save_file

    from amdet_audit.checks.weights_diff import WeightsDiffCheck

    weights = model_folder / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    vocab = json.loads((model_folder / "vocab.json").read_text()) if (model_folder / "vocab.json").is_file() else \
        json.loads((model_folder / "tokenizer.json").read_text())["model"]["vocab"]
    row = vocab["zzzz</w>"] if "zzzz</w>" in vocab else 100
    state[key][row] += 5.0
    layer = next(k for k in state if ".layers.0." in k and k.endswith("fc1.weight"))
    state[layer] = state[layer] * 1.5
    save_file(state, weights)
    check = WeightsDiffCheck()
    skipped = check.run(context(model_folder))
    assert skipped.status == "skipped" and "no reference" in skipped.reason
    result = check.run(CheckContext(target=resolve(str(model_folder)), reference=resolve(str(tiny_clip))))
    assert result.status == "ran" and {f.rule for f in result.findings} == {"weights-diff.summary",
                                                                            "weights-diff.token-embeddings"}
    tokens = next(f.message for f in result.findings if f.rule == "weights-diff.token-embeddings")
    moved_first = {int(i): t for t, i in vocab.items()}.get(row, f"#{row}")
    assert f"most (relative change): {moved_first!r}" in tokens
    assert result.scores["model:encoder.layers.0"] > 0 and result.scores["model:final_layer_norm"] == 0.0
    same = check.run(CheckContext(target=resolve(str(tiny_clip)), reference=resolve(str(tiny_clip))))
    assert same.scores["model:max_relative_change"] == 0.0
    assert not any(f.rule == "weights-diff.token-embeddings" for f in same.findings)


@pytest.mark.parametrize("how", ["bad-id", "outside-link", "fifo"])
def test_weights_diff_reads_the_vocabulary_safely(model_folder: Path, tiny_clip: Path, tmp_path: Path,
                                                  how: str) -> None:
    from safetensors.torch import load_file, save_file

    from amdet_audit.checks.weights_diff import WeightsDiffCheck

    state = load_file(model_folder / "model.safetensors")
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    state[key][100] += 5.0  # a moved row, so the check decodes it through the vocabulary
    save_file(state, model_folder / "model.safetensors")
    target = resolve(str(model_folder))  # the vocabulary changes after the target was resolved
    name = "tokenizer.json" if (model_folder / "tokenizer.json").is_file() else "vocab.json"
    vocab_file = model_folder / name
    document = json.loads(vocab_file.read_text(encoding="utf-8"))
    vocab_file.unlink()
    if how == "bad-id":
        vocab = document["model"]["vocab"] if name == "tokenizer.json" else document
        vocab["hello</w>"] = "not-a-number"
        vocab_file.write_text(json.dumps(document), encoding="utf-8")
    elif how == "outside-link":
        outside = tmp_path / "outside.json"
        outside.write_text(json.dumps(document), encoding="utf-8")
        vocab_file.symlink_to(outside)
    else:
        os.mkfifo(vocab_file)
    result = WeightsDiffCheck().run(CheckContext(target=target, reference=resolve(str(tiny_clip))))
    assert result.status == "error" and name in result.reason, (result.status, result.reason)
    assert "\n" not in result.reason


def test_a_t5_scanned_without_its_pipeline_gets_an_info_note_not_a_failure() -> None:
    """A lone T5 read at the lone-encoder length (no --consumer) is told which reads its pipelines make; the note
    does not change the verdict. A T5 read as a named pipeline reads it, and a CLIP, get no note."""
    from amdet_audit.checks.assimilation import UNNAMED_CONSUMER, component_findings, judge_components

    scan = {"verdict": "clean", "reasons": ["no deciding rule holds"], "mode": "reference", "checks": []}
    lone = {"name": "model", "encoder": {"family": "t5", "max_length": 64}, "scan": scan,
            "consumer": {"name": "clip", "length": None}}
    (note,) = component_findings(lone)
    assert note.rule == UNNAMED_CONSUMER and note.severity == "info"
    assert "read at 64 tokens" in note.message and "(sd3 256, flux 512, pixart 300 tokens)" in note.message
    assert "--consumer sd3, flux, pixart" in note.message
    assert component_findings({**lone, "consumer": {"name": "sd3", "length": 256}}) == []
    assert component_findings({**lone, "encoder": {"family": "clip", "max_length": 77}}) == []
    result = judge_components([lone])
    gated = apply_policy({"files": [], "components": [{"name": "model"}]}, [result.to_dict()], load_policy())
    assert gated["verdict"]["status"] == "pass" and gated["verdict"]["exit_code"] == 0
    # the terminal shows it as a note (the other info findings stay in the reports)
    from rich.console import Console

    from amdet_audit.cli.console import print_report
    from amdet_audit.report.model import AuditReport

    report = AuditReport(target={"input": "t5"}, components=[], verdict=gated["verdict"], run={},
                         checks=[result.to_dict()])
    console = Console(record=True, width=400)
    print_report(report, console)
    assert "note: model: a T5 scanned without its pipeline, read at 64 tokens" in console.export_text()
