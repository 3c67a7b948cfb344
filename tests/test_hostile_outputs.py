"""Outputs of an audit of a hostile model folder: never overwritten, never injected, always strict and complete.

Every hostile input is generated here: report folders and symlinks planted where the tool writes, tokenizer
files and file names carrying terminal escapes, bidi overrides, rich markup, HTML and Markdown, NaN weights, a
pipeline with one broken component, secret plugin options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from schema_check import assert_valid_report, assert_valid_sarif

from amdet_audit.outputs import OutputError, write_new
from amdet_audit.report.escaping import markdown, uri_path, visible

FILE_CHECKS = "serialization,remote-code,tokenizer"
HOSTILE = ["\x1b[31mred\x1b[0m", "\x1b]0;pwned\x07", "\u202etxt.exe", "[/]", "[bold]x[/bold]",
           "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "![x](https://e.invalid/x.png)",
           "trig\u200bger"]
HOSTILE_FILE = "evil\x1b[2J\u202e[red] x#%?.py"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def one_line_error(result, *needles: str) -> str:
    """The single stderr line of a run that failed with exit 2 and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every entry below ``folder``: file contents, link targets, or a folder marker."""
    out = {}
    for path in sorted(folder.rglob("*")):
        out[str(path.relative_to(folder))] = (b"->" + os.readlink(path).encode() if path.is_symlink()
                                              else path.read_bytes() if path.is_file() else b"<dir>")
    return out


@pytest.fixture
def model(tiny_clip: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny CLIP folder."""
    return Path(shutil.copytree(tiny_clip, tmp_path / "enc"))


@pytest.fixture
def hostile(model: Path) -> Path:
    """The tiny CLIP folder with hostile added tokens and a custom-code file with a hostile name."""
    (model / "added_tokens.json").write_text(json.dumps({t: 49408 + i for i, t in enumerate(HOSTILE)}),
                                             encoding="utf-8")
    (model / HOSTILE_FILE).write_text("raise SystemExit('never run')\n", encoding="utf-8")
    return model


@pytest.fixture
def scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private result cache for this test."""
    monkeypatch.setenv("AMDET_AUDIT_CACHE_SCANS", str(tmp_path / "scans"))
    return tmp_path / "scans"


# -- outputs never overwrite ------------------------------------------------------------------------------------


def test_an_existing_default_report_folder_is_never_reused(run_cli, model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    now = datetime.now(timezone.utc)
    taken = [tmp_path / f"amdet-audit-enc-{(now + timedelta(seconds=s)).strftime('%Y%m%dT%H%M%SZ')}"
             for s in range(-1, 30)]
    for folder in taken:
        folder.mkdir()
        (folder / "report.json").write_text("theirs")
    result = run_cli("scan", "enc", "--checks", FILE_CHECKS)
    assert result.exit_code == 0, result.stderr
    assert all((f / "report.json").read_text() == "theirs" and len(list(f.iterdir())) == 1 for f in taken)
    (new,) = [p for p in tmp_path.iterdir() if p.name.startswith("amdet-audit-enc-") and p not in taken]
    assert re.fullmatch(r"amdet-audit-enc-\d{8}T\d{6}Z-\d+", new.name)
    assert json.loads((new / "report.json").read_text())["verdict"]["exit_code"] == 0


def test_parallel_runs_get_distinct_folders(model: Path, tmp_path: Path) -> None:
    runs = 4
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "AMDET_AUDIT_CACHE_SCANS": str(tmp_path / "scans"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "amdet_audit", "scan", str(model), "--checks", FILE_CHECKS],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(runs)]  # all started before any finishes: same cwd, same target, same second
    try:
        outcomes = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    assert [p.returncode for p in procs] == [0] * runs, outcomes
    folders = sorted(work.iterdir())
    assert len(folders) == runs and all(f.name.startswith("amdet-audit-") for f in folders), folders
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.md", "report.sarif"]
        assert json.loads((folder / "report.json").read_text(encoding="utf-8"))["verdict"]["exit_code"] == 0


def test_a_file_planted_in_out_after_the_check_is_never_followed(run_cli, model: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import amdet_audit.audit.run as run

    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    real_decide = run.apply_policy

    def plant_then_decide(*args, **kwargs):
        (out / "report.md").symlink_to(outside)  # appears after --out was checked, before the reports
        return real_decide(*args, **kwargs)

    monkeypatch.setattr(run, "apply_policy", plant_then_decide)
    result = run_cli("scan", model, "--checks", FILE_CHECKS, "--out", out)
    one_line_error(result, "report.md", "already exists")
    assert outside.read_text() == "keep me"
    assert (out / "report.md").is_symlink() and (out / "report.json").is_file()


def test_evidence_files_are_new_files(tmp_path: Path) -> None:
    import torch

    from amdet_audit.audit.components import write_evidence

    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"theirs")
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "target_feature.safetensors").symlink_to(outside)
    arrays = {"pseudo_trigger": torch.zeros(2, 4), "ti_emb_params": torch.zeros(2, 4), "target_feature": torch.ones(4)}
    with pytest.raises(OutputError, match="target_feature.safetensors already exists"):
        write_evidence(folder, arrays)
    assert outside.read_bytes() == b"theirs"
    nested = tmp_path / "report" / "text_encoder"
    nested.mkdir()
    with pytest.raises(OutputError, match="already exists"):
        write_evidence(nested, arrays, new_folder=True)
    files = write_evidence(tmp_path / "report" / "text_encoder_2", arrays, new_folder=True)
    assert sorted(Path(p).name for p in files.values()) == ["pseudo_trigger.safetensors",
                                                            "pseudo_trigger_ti.safetensors",
                                                            "target_feature.safetensors"]


def test_image_plugins_write_only_into_folders_made_for_them(tmp_path: Path) -> None:
    import pluggy

    from amdet_audit import hookspecs
    from amdet_audit.audit.target_images import render_target_images

    class Painter:
        @hookspecs.hookimpl
        def amdet_audit_target_images(self, component, target_feature, out_dir, options):
            image = Path(out_dir) / "target-0.png"
            image.write_bytes(b"png")
            return [{"path": str(image), "caption": "x"}]

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(Painter(), name="painter")
    entries = [{"name": "model", "evidence_files": {"target_feature": "t.safetensors"}}]
    out = tmp_path / "ok"
    out.mkdir()
    render_target_images(pm, entries, out, {})
    assert (out / "target-images" / "model" / "painter" / "target-0.png").read_bytes() == b"png"
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "target-images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="target-images already exists"):
        render_target_images(pm, [{"name": "model", "evidence_files": {"target_feature": "t"}}], planted, {})
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("kind", ["dangling", "to-empty-folder", "file", "non-empty"])
def test_out_that_is_a_symlink_or_not_empty_is_refused(run_cli, model: Path, tmp_path: Path, kind: str) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    if kind == "dangling":
        out.symlink_to(elsewhere)
    elif kind == "to-empty-folder":
        elsewhere.mkdir()
        out.symlink_to(elsewhere)
    elif kind == "file":
        out.write_text("theirs")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("theirs")
    before = tree(tmp_path)
    line = one_line_error(run_cli("scan", model, "--checks", FILE_CHECKS, "--out", out), "--out")
    assert "internal error" not in line
    assert tree(tmp_path) == before


def test_report_out_and_policy_init_never_follow_a_symlink(run_cli, model: Path, tmp_path: Path) -> None:
    first = run_cli("scan", model, "--checks", FILE_CHECKS, "--out", tmp_path / "r")
    assert first.exit_code == 0, first.stderr
    for args in (["report", tmp_path / "r" / "report.json", "--format", "md", "--out"], ["policy", "init"]):
        link, target = tmp_path / "link", tmp_path / "created-through-link"
        link.symlink_to(target)
        one_line_error(run_cli(*args, link), "already exists", "symbolic link")
        assert not target.exists()
        link.unlink()
        target.write_text("theirs")
        link.symlink_to(target)
        one_line_error(run_cli(*args, link), "already exists")
        assert target.read_text() == "theirs"
        link.unlink()
        target.unlink()
    written = run_cli("report", tmp_path / "r" / "report.json", "--format", "md", "--out", tmp_path / "new.md")
    assert written.exit_code == 0 and (tmp_path / "new.md").read_text().startswith("## amdet-audit")


def test_write_new_refuses_anything_that_exists(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    for name in ("dangling", "file"):
        with pytest.raises(OutputError, match="outputs never overwrite"):
            write_new(tmp_path / name, "y")
    assert not (tmp_path / "nowhere").exists() and (tmp_path / "file").read_text() == "x"


# -- model strings never inject ---------------------------------------------------------------------------------


def test_escaping_per_medium() -> None:
    assert visible("a\x1b[31mb\u202ec\x7f\x85\n") == "a\\x1b[31mb\\u202ec\\x7f\\x85\\x0a"
    rendered = markdown("<script>x</script> ![x](https://e.invalid/x.png) **b** | www.e.invalid a@e.invalid")
    assert "<" not in rendered and "![" not in rendered and "://" not in rendered and " | " not in rendered
    assert "www." not in rendered and "@" not in rendered and "**" not in rendered
    assert markdown("# title").startswith("\\#") and markdown("1. item").startswith("1\\.")
    assert uri_path("dir/a b#%?\u202e.py") == "dir/a%20b%23%25%3F%E2%80%AE.py"


def test_hostile_strings_in_file_checks_reach_no_output_raw(run_cli, hostile: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = run_cli("scan", hostile, "--checks", FILE_CHECKS, "--out", out)
    assert result.exit_code == 1, result.stderr  # invisible-token and custom-code findings are high
    assert not RAW.search(result.stdout + result.stderr)
    assert "custom code: evil\\x1b[2J\\u202e[red] x#%?.py" in result.stdout  # shown, escaped, markup literal

    md = (out / "report.md").read_text(encoding="utf-8")
    assert not RAW.search(md)
    for raw in ("<script", "<img", "![", "https://"):
        assert raw not in md, raw
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the token is still shown, as text

    sarif = json.loads((out / "report.sarif").read_text(encoding="utf-8"))
    assert_valid_sarif(sarif)
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]]
    assert all(re.fullmatch(r"(file://)?[A-Za-z0-9\-._~/%]+", uri) for uri in uris), uris  # real paths, encoded
    assert any(uri.endswith(uri_path(HOSTILE_FILE)) for uri in uris)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page and not RAW.search(page)
    assert "Content-Security-Policy" in page
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert_valid_report(document)
    assert not RAW.search((out / "report.json").read_text(encoding="utf-8"))  # escaped as \uXXXX in JSON


ENCODER = {"family": "clip", "architecture": "CLIPTextModel", "hidden_size": 32, "layers": 1}


def canned_scan(verdict: str, tokens: list[str]) -> dict:
    """A scan result as run_scan reports it, with ``tokens`` as nearest tokens and in prompts and reasons."""
    checks = [{"name": "target.collapse", "score": 0.9, "threshold": 0.82, "direction": ">=",
               "flags": verdict == "backdoored", "description": "cross-prompt collapse"}]
    return {"verdict": verdict, "mode": "reference-free", "reasons": [f"collapse onto {tokens[0]}"],
            "checks": checks, "scores": {"collapse": 0.9},
            "evidence": {"k": 2, "nearest_tokens": [[{"id": i, "token": t, "cosine": 0.5} for i, t in
                                                      enumerate(tokens)]],
                         "nearest_prompts": [{"prompt": f"a photo {t}", "score": 1.0} for t in tokens]},
            "config": {}, "timings": {}, "series": {}}


def cached_backdoor(folder: Path, tokens: list[str]) -> None:
    """A cached backdoored scan of ``folder`` (as ``scan --reference-free`` would look it up) whose evidence
    carries hostile nearest tokens, prompts and a hostile reason."""
    from amdet_audit import cache
    from amdet_audit.api import ScanOptions, SourceOptions
    from amdet_audit.audit.policy import load_policy
    from amdet_audit.audit.run import scan_choices

    resolved = SourceOptions().resolve(str(folder))
    options = ScanOptions(reference_free=True, policy=load_policy())
    key = cache.scan_key(resolved.to_dict(), scan_choices(options, resolved, "cpu"))
    name = resolved.components[0].name
    entry = {"name": name, "encoder": ENCODER, "scan": canned_scan("backdoored", tokens), "evidence_files": {}}
    cache.store_scan(key, [entry], {name: None}, "2026-01-01T00:00:00+00:00")


def test_a_backdoor_with_markup_tokens_still_exits_1(run_cli, model: Path, tmp_path: Path, scans: Path) -> None:
    cached_backdoor(model, HOSTILE)
    out = tmp_path / "r"
    result = run_cli("scan", model, "--reference-free", "--no-plugins", "--out", out)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "BACKDOORED" in result.stdout and "internal error" not in result.stderr
    assert "[/]" in result.stdout and "\\x1b[31mred" in result.stdout and "\\u202etxt.exe" in result.stdout
    assert not RAW.search(result.stdout + result.stderr)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script" not in md and "![" not in md and not RAW.search(md)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and not RAW.search(page)
    as_md = run_cli("scan", model, "--reference-free", "--no-plugins", "--out", tmp_path / "r2", "--format", "md")
    assert as_md.exit_code == 1 and "<script" not in as_md.stdout and not RAW.search(as_md.stdout)
    as_json = run_cli("scan", model, "--reference-free", "--no-plugins", "--out", tmp_path / "r3", "--format", "json")
    assert as_json.exit_code == 1 and not RAW.search(as_json.stdout)
    assert json.loads(as_json.stdout)["components"][0]["scan"]["evidence"]["nearest_tokens"][0][2]["token"] == \
        HOSTILE[2]


# -- strict JSON, complete reports ------------------------------------------------------------------------------


def refuse(constant: str) -> None:
    raise AssertionError(f"report.json holds {constant}")


def test_nan_weights_give_strict_json_and_every_report(run_cli, model: Path, tmp_path: Path, scans: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    weights["embeddings.token_embedding.weight"][100:110] = float("nan")
    save_file(weights, model / "model.safetensors")
    out = tmp_path / "r"
    result = run_cli("scan", model, "--reference-free", "--no-plugins", "--out", out)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith("amdet-audit: inconclusive: ")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("report.")) == [
        "report.html", "report.json", "report.md", "report.sarif"]
    document = json.loads((out / "report.json").read_text(encoding="utf-8"), parse_constant=refuse)
    assert_valid_report(document)
    assert document["nonfinite"] and all(p.startswith("/components/0/") for p in document["nonfinite"])
    pointer = document["nonfinite"][0].split("/")[1:]
    value = document
    for part in pointer:
        value = value[int(part)] if isinstance(value, list) else value[part]
    assert value is None
    json.loads((out / "report.sarif").read_text(encoding="utf-8"), parse_constant=refuse)
    assert torch.isnan(load_file(model / "model.safetensors")["embeddings.token_embedding.weight"][100]).all()


def test_a_clean_scan_with_a_nan_score_is_not_a_pass() -> None:
    from amdet_audit.audit.gate import apply_policy
    from amdet_audit.audit.policy import load_policy
    from amdet_audit.checks.assimilation import judge_components

    scan = {"verdict": "clean", "mode": "reference", "reasons": ["no collapse"], "scores": {"collapse": float("nan")},
            "checks": [{"name": "target.collapse", "score": float("nan")}]}
    checks = [judge_components([{"name": "model", "scan": scan}]).to_dict()]
    out = apply_policy({"input": "x", "files": []}, checks, load_policy())
    assert out["verdict"]["exit_code"] == 2 and "non-finite scores" in "; ".join(out["verdict"]["reasons"])


def test_a_failing_component_keeps_the_others_and_every_report(run_cli, tiny_pipeline: Path, tmp_path: Path,
                                                              scans: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import amdet_audit.audit.components as components

    real_scan_component = components.scan_component

    def fast_first_component(resolved, name, *args, **kwargs):  # text_encoder: a finished scan, in no time
        if name == "text_encoder":
            return {"name": name, "encoder": ENCODER, "scan": canned_scan("clean", ["a"]), "evidence_files": {}}, \
                None, None
        return real_scan_component(resolved, name, *args, **kwargs)  # text_encoder_2: really loaded, and fails

    monkeypatch.setattr(components, "scan_component", fast_first_component)
    pipe = Path(shutil.copytree(tiny_pipeline, tmp_path / "pipe"))
    config = json.loads((pipe / "text_encoder_2" / "config.json").read_text())
    config["intermediate_size"] = 8  # the weights say otherwise: this component cannot load
    (pipe / "text_encoder_2" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "r"
    result = run_cli("scan", pipe, "--reference-free", "--no-plugins", "--out", out)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amdet-audit: inconclusive: text_encoder_2: not scanned: ")
    assert "text_encoder:" in result.stdout and "not scanned" in result.stdout
    document = json.loads((out / "report.json").read_text(encoding="utf-8"), parse_constant=refuse)
    assert_valid_report(document)
    assert "scan" in document["components"][0] and "error" in document["components"][1]
    for fmt in ("md", "html", "sarif"):
        assert (out / f"report.{fmt}").stat().st_size > 0
    assert "Not scanned" in (out / "report.md").read_text() and "Not scanned" in (out / "report.html").read_text()


# -- secrets --------------------------------------------------------------------------------------------------


def test_secret_plugin_options_and_hf_token_are_redacted(run_cli, model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_NotARealTokenButSecret")
    out = tmp_path / "r"
    result = run_cli("scan", model, "--checks", FILE_CHECKS, "--out", out,
                     "--plugin-option", "x.token=s3cr3t-value", "--plugin-option=y.api_key=other-secret",
                     "--plugin-option", "z.note=hf_NotARealTokenButSecret", "--plugin-option", "d.pipeline=/p")
    assert result.exit_code == 0, result.stderr
    argv = json.loads((out / "report.json").read_text())["run"]["argv"]
    assert "x.token=***" in argv and "--plugin-option=y.api_key=***" in argv and "z.note=***" in argv
    assert "d.pipeline=/p" in argv
    everything = "".join((out / f"report.{fmt}").read_text() for fmt in ("json", "md", "html", "sarif"))
    for secret in ("s3cr3t-value", "other-secret", "hf_NotARealTokenButSecret"):
        assert secret not in everything and secret not in result.stdout + result.stderr


# -- the file-checks-only audit ---------------------------------------------------------------------------------


def test_file_checks_only_run_in_seconds_without_loading_the_model(model: Path, tmp_path: Path) -> None:
    code = ("import sys, json\nfrom amdet_audit.cli import main\n"
            f"sys.argv = ['amdet-audit', 'scan', {str(model)!r}, '--checks', {FILE_CHECKS!r}, '--format', 'json',"
            f" '--out', {str(tmp_path / 'r')!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules, "
            "'transformers': 'transformers' in sys.modules}), file=sys.stderr)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AMDET_AUDIT_CACHE_SCANS": str(tmp_path / "scans")})
    elapsed = time.monotonic() - started
    status = json.loads(done.stderr.strip().splitlines()[-1])
    assert status == {"code": 0, "torch": False, "transformers": False}, done.stderr
    assert elapsed < 30, elapsed
    document = json.loads(done.stdout)
    assert document["verdict"]["label"] == "clean" and document["components"] == []
    coverage = {r["check"]: r for r in document["coverage"]}
    assert coverage["assimilation"]["status"] == "skipped" and not coverage["assimilation"]["required"]
    assert all(coverage[c]["status"] == "ran" and coverage[c]["required"] for c in FILE_CHECKS.split(","))
    assert document["policy"]["required"] == FILE_CHECKS.split(",")
    assert not (tmp_path / "scans").exists()  # nothing scanned, nothing cached


def test_file_checks_only_gate_needs_no_cached_scan(run_cli, hostile: Path, tiny_clip: Path, tmp_path: Path,
                                                   scans: Path) -> None:
    clean = Path(shutil.copytree(tiny_clip, tmp_path / "clean"))
    passed = run_cli("verify", clean / "model.safetensors", "--checks", FILE_CHECKS)
    assert passed.exit_code == 0, (passed.stdout, passed.stderr)
    failed = run_cli("verify", hostile / "model.safetensors", "--checks", FILE_CHECKS)
    assert failed.exit_code == 1 and not RAW.search(failed.stdout + failed.stderr)
    one_line_error(run_cli("scan", hostile, "--checks", "serialization,nope"), "--checks", "nope")
    assert not list(Path.cwd().glob("amdet-audit-enc-*"))


def test_pre_commit_manifest_has_the_file_checks_hook() -> None:
    import yaml

    hooks = {h["id"]: h for h in yaml.safe_load((Path(__file__).parents[1] / ".pre-commit-hooks.yaml").read_text())}
    hook = hooks["amdet-audit-file-checks"]
    assert hook["entry"].split()[:2] == ["amdet-audit", "verify"] and f"--checks {FILE_CHECKS}" in hook["entry"]
    assert hook["language"] == "python" and "pre-commit" in hook["stages"]


@pytest.mark.parametrize("name", ["evil.pkl", "model.pth", "x.pickle", "x.joblib", "x.npy", "code/modeling_x.py"])
def test_file_checks_hook_fires_on_pickles_and_code(run_cli, model: Path, name: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import yaml

    hook = {h["id"]: h for h in yaml.safe_load((Path(__file__).parents[1] / ".pre-commit-hooks.yaml").read_text())
            }["amdet-audit-file-checks"]
    assert re.search(hook["files"], name), hook["files"]
    added = model / name
    added.parent.mkdir(exist_ok=True)
    if name.endswith(".py"):
        added.write_text("import os\nos.system('id')\n", encoding="utf-8")
    else:
        added.write_bytes(pickle.dumps(os.system, protocol=2))
    monkeypatch.chdir(model.parent)  # pre-commit runs in the repository root and passes paths relative to it
    result = run_cli("verify", added.relative_to(model.parent), "--checks", FILE_CHECKS)
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from amdet_audit.outputs import OutputError, copy_new, write_new\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "out = Path(sys.argv[1])\n"
        "for name, call in (('w.txt', lambda p: write_new(p, 'x' * 100_000)),\n"
        "                   ('c.bin', lambda p: copy_new(out / 'src.bin', p))):\n"
        "    try:\n"
        "        call(out / name)\n"
        "    except OutputError as err:\n"
        "        print('refused', name, (out / name).exists(), str(err).count(chr(10)))\n")
    (tmp_path / "src.bin").write_bytes(b"y" * 3000)
    with (tmp_path / "src.bin").open("ab") as handle:  # grown past the limit before the child lowers it
        handle.write(b"y" * 100_000)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["refused w.txt False 0", "refused c.bin False 0"], done.stdout


def test_an_unreadable_out_or_verify_folder_is_one_line(run_cli, model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    listing = Path.iterdir

    def refuse_locked(self: Path):  # what a folder without read permission does (root reads every folder)
        if self.name == "locked":
            raise PermissionError(13, "Permission denied")
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refuse_locked)
    one_line_error(run_cli("scan", model, "--checks", FILE_CHECKS, "--out", locked), "--out", "cannot list")
    one_line_error(run_cli("verify", locked, "--checks", FILE_CHECKS), "cannot be listed")


def test_a_failing_renderer_keeps_the_other_reports_and_is_one_line(run_cli, model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from amdet_audit.report import render as render_module

    real = render_module.render

    def broken_markdown(document, fmt, folder=None):
        if fmt == "md":
            raise RuntimeError("template\nexploded")
        return real(document, fmt, folder)

    monkeypatch.setattr(render_module, "render", broken_markdown)
    out = tmp_path / "r"
    line = one_line_error(run_cli("scan", model, "--checks", FILE_CHECKS, "--out", out), "report.md",
                          "template exploded")
    assert "internal error" not in line
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.sarif"]


def test_report_rerender_reads_only_a_regular_report_and_embeds_only_its_own_images(run_cli, model: Path,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert run_cli("scan", model, "--checks", FILE_CHECKS, "--out", out).exit_code == 0
    fifo = tmp_path / "report-fifo.json"
    os.mkfifo(fifo)
    start = time.monotonic()
    one_line_error(run_cli("report", fifo), "not a regular file")
    assert time.monotonic() - start < 20
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG SECRET-OUTSIDE")
    (out / "inside.png").write_bytes(b"\x89PNG MINE")
    (out / "link.png").symlink_to(secret)
    import base64

    from amdet_audit.report.html import image_uri

    assert image_uri(str(secret), out) is None and image_uri(str(out / "link.png"), out) is None
    assert image_uri(str(out / "inside.png"), out) == "data:image/png;base64," + base64.b64encode(
        b"\x89PNG MINE").decode()
    assert run_cli("report", out / "report.json").exit_code == 0


def test_one_definition_of_hidden_characters_and_of_one_line_messages() -> None:
    from amdet_audit.checks import hygiene, serialization
    from amdet_audit.encoders import weights
    from amdet_audit.errors import one_line, shown
    from amdet_audit.sources import config_limits

    assert hygiene.hidden is visible.__globals__["hidden"]
    assert visible("a\u00a0b\u202ec") == "a\\xa0b\\u202ec"  # an odd space is a look-alike: shown, and flagged
    assert serialization.one_line is one_line and config_limits.shown is shown
    assert weights.one_line is one_line and one_line(ValueError("first\n  second")) == "first second"
    assert shown(10 ** 5000) == "a number too large"
