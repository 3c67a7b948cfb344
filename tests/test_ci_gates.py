"""CI gates: the result cache, `amdet-audit verify`, waivers end to end, the pre-commit hooks run by pre-commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from schema_check import assert_valid_report, assert_valid_sarif

from amdet_audit.sources.canary import ensure_canary

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding a copy of the backdoored canary at models/enc, with its own result cache."""
    monkeypatch.setenv("AMDET_AUDIT_CACHE_SCANS", str(tmp_path / "scans"))
    root = tmp_path / "repo"
    shutil.copytree(ensure_canary("backdoored"), root / "models" / "enc")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    monkeypatch.chdir(root)
    return root


def test_cache_verify_and_waivers_end_to_end(run_cli, repo: Path, tmp_path: Path) -> None:
    (repo / "README.md").write_text("a changed file of no model: skipped\n")
    before = run_cli("verify", "models/enc/model.safetensors", "models/enc/config.json", "README.md")
    assert before.exit_code == 2 and "no cached scan" in before.stdout and before.stdout.count("\n") == 1

    first = run_cli("scan", "models/enc", "--out", tmp_path / "r1", "--no-plugins")
    assert first.exit_code == 1
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["run"]["cache"]["hit"] is False and report["verdict"]["label"] == "backdoored"
    (finding,) = [f for f in report["findings"] if f["rule"] == "assimilation.backdoor"]

    again = run_cli("scan", "models/enc", "--out", tmp_path / "r2", "--no-plugins")
    cached = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert again.exit_code == 1 and cached["run"]["cache"]["hit"] is True
    assert cached["components"][0]["scan"] == report["components"][0]["scan"]
    for path in cached["components"][0]["evidence_files"].values():
        assert Path(path).is_file() and Path(path).parent == tmp_path / "r2"
    assert_valid_report(cached)

    gate = run_cli("verify", "models/enc/model.safetensors")
    assert gate.exit_code == 1 and "models/enc: backdoored (cached)" in gate.stdout

    policy = tmp_path / "waive.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "waivers": [
        {"fingerprint": finding["fingerprint"], "reason": "accepted in review SEC-1", "owner": "alice",
         "expires": "2999-01-01"}]}))
    waived = run_cli("scan", "models/enc", "--out", tmp_path / "r3", "--no-plugins", "--policy", policy)
    document = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert waived.exit_code == 0 and document["run"]["cache"]["hit"] is True  # waivers do not rescan
    assert document["findings"][0]["waiver"]["status"] == "applied" and document["policy"]["waivers"][0][
        "status"] == "applied"
    sarif = json.loads((tmp_path / "r3" / "report.sarif").read_text())
    assert_valid_sarif(sarif)
    (result,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "assimilation.backdoor"]
    assert result["suppressions"][0]["status"] == "accepted"
    assert "waived by alice" in (tmp_path / "r3" / "report.html").read_text()

    expired = policy.read_text().replace("2999-01-01", "2001-01-01")
    policy.write_text(expired)
    assert run_cli("verify", "models/enc", "--policy", policy).exit_code == 1

    fresh = run_cli("scan", "models/enc", "--out", tmp_path / "r4", "--no-plugins", "--no-cache")
    assert fresh.exit_code == 1
    assert json.loads((tmp_path / "r4" / "report.json").read_text())["run"]["cache"]["hit"] is False


def hooks_as_local(manifest: Path) -> dict:
    """A .pre-commit-config.yaml running this repo's hook manifest with the installed amdet-audit.

    pre-commit would install the hooks' Python package into a fresh virtualenv (with a multi-GB torch); the
    test keeps every field of the manifest and only swaps ``language: python`` for the already installed tool.
    """
    hooks = yaml.safe_load(manifest.read_text())
    bindir = Path(sys.executable).parent
    for hook in hooks:
        assert hook["language"] == "python"
        hook["language"] = "system"
        hook["entry"] = str(bindir / hook["entry"].split()[0]) + " " + " ".join(hook["entry"].split()[1:])
    return {"repos": [{"repo": "local", "hooks": hooks}]}


@pytest.mark.skipif(shutil.which("pre-commit", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                      os.environ.get("PATH", "")])) is None,
                    reason="pre-commit is not installed")
def test_pre_commit_hooks_gate_commits(repo: Path, tmp_path: Path) -> None:
    pre_commit = str(Path(sys.executable).parent / "pre-commit")
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(hooks_as_local(ROOT / ".pre-commit-hooks.yaml")))
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)

    assert subprocess.run([pre_commit, "install", "-t", "pre-commit"], cwd=repo, env=env).returncode == 0
    git("add", ".")
    refused = git("commit", "-qm", "add encoder")
    assert refused.returncode != 0 and "no cached scan" in refused.stdout + refused.stderr

    scan = subprocess.run([pre_commit, "run", "amdet-audit-scan", "--hook-stage", "manual", "--all-files"],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert scan.returncode == 1 and "models/enc: backdoored" in scan.stdout  # the heavy hook scanned it

    still = git("commit", "-qm", "add encoder")
    assert still.returncode != 0 and "models/enc: backdoored (cached)" in still.stdout + still.stderr
    git("rm", "-rq", "--cached", "models")
    shutil.rmtree(repo / "models")
    shutil.copytree(ensure_canary("clean"), repo / "models" / "enc")
    git("add", ".")
    assert subprocess.run([pre_commit, "run", "amdet-audit-scan", "--hook-stage", "manual", "--all-files"],
                          cwd=repo, env=env, capture_output=True, text=True).returncode == 0
    ok = git("commit", "-qm", "add clean encoder")
    assert ok.returncode == 0, ok.stdout + ok.stderr
