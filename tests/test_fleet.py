"""``amdet-audit fleet``: many targets in one folder, locally (in-process and worker processes) and on Ray (a
local runtime, and a cluster started here with ``ray start --head``); resume, dedup, failure isolation, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from amdet_audit.errors import UsageError
from amdet_audit.fleet.plan import Entry, plan

SCHEMA = Path(__file__).resolve().parents[1] / "amdet_audit" / "fleet" / "fleet.schema.json"


def assert_valid_fleet(document: dict) -> None:
    import jsonschema

    jsonschema.validate(document, json.loads(SCHEMA.read_text()))


def test_a_list_file_is_lines_or_a_yaml_list(tmp_path: Path) -> None:
    lines = tmp_path / "list.txt"
    lines.write_text("# models to vet\ncanary:clean\n\norg/model@main\n")
    assert [e.target for e in plan(["x/y"], lines)] == ["x/y", "canary:clean", "org/model@main"]
    listed = tmp_path / "list.yaml"
    listed.write_text("- canary:clean\n- {target: ./enc, reference: canary:clean, consumer: sdxl}\n")
    assert plan([], listed)[1] == Entry("./enc", reference="canary:clean", consumer="sdxl")
    for text, message in [("- {target: a, colour: red}\n", "unknown field 'colour'"),
                          ("- {reference: a}\n", "no target"), ("- [a, b]\n", "expected a TARGET"),
                          ("- a\n- a\n", "listed twice"), ("- &x a\n- *x\n", "alias"),
                          ("- {target: 3}\n", "non-empty string")]:
        listed.write_text(text)
        with pytest.raises(Exception, match=message):
            plan([], listed)
    with pytest.raises(UsageError, match="no targets"):
        plan([], None)


@pytest.fixture(scope="module")
def fleet_targets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six targets: the canaries, a copy of the backdoored one (the same files), a random tower no built-in
    reference fits, a missing path, and a copy of the clean canary named with its own reference."""
    from amdet_audit.lab.folders import tiny_clip_folder
    from amdet_audit.sources.canary import ensure_canary

    root = tmp_path_factory.mktemp("fleet")
    shutil.copytree(ensure_canary("backdoored"), root / "copy-of-backdoored")
    shutil.copytree(ensure_canary("clean"), root / "clean-copy")
    tiny_clip_folder(root / "random-tower", hidden=32, layers=1, heads=2)
    listing = root / "fleet.yaml"
    listing.write_text(f"- canary:clean\n- canary:backdoored\n- {root / 'copy-of-backdoored'}\n"
                       f"- {root / 'random-tower'}\n- {root / 'missing'}\n"
                       f"- {{target: {root / 'clean-copy'}, reference: canary:clean}}\n")
    return root, listing


@pytest.mark.slow
def test_local_fleet_dedups_isolates_failures_and_resumes(run_cli, fleet_targets: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    root, listing = fleet_targets
    out = tmp_path / "fleet"
    result = run_cli("fleet", "--from", listing, "--out", out, "--jobs", "2", "--no-plugins")
    assert result.exit_code == 1, result.stderr  # a backdoor fails the policy, outranking the errors
    document = json.loads((out / "fleet.json").read_text())
    assert_valid_fleet(document)
    assert document["counts"] == {"total": 6, "finished": 6, "passed": 2, "failed": 2, "errors": 2, "pending": 0}
    by = {Path(r["target"]).name: r for r in document["targets"]}
    assert by["canary:backdoored"]["label"] == "backdoored" and by["canary:clean"]["label"] == "clean"
    dup = by["copy-of-backdoored"]
    assert dup["duplicate_of"] == "canary:backdoored" and dup["cache_hit"] is True and dup["label"] == "backdoored"
    assert by["clean-copy"]["label"] == "clean" and "duplicate_of" not in by["clean-copy"]  # its own reference
    assert "no known clean base" in by["random-tower"]["error"] and "no such file" in by["missing"]["error"]
    assert by["canary:backdoored"]["pid"] != os.getpid()  # a worker process scanned it
    assert set(by["canary:backdoored"]["scores"]["model"]) >= {"target.collapse_gain", "token_collapse.excess"}
    for r in document["targets"]:
        if r["status"] == "done":
            assert (out / r["folder"] / "report.json").is_file()
    sarif = json.loads((out / "fleet.sarif").read_text())
    assert len(sarif["runs"]) == 4 and "| canary:backdoored | backdoored | 1 |" in (out / "fleet.md").read_text()
    html = (out / "fleet.html").read_text()
    assert 'href="targets/0001-canary-backdoored/report.html"' in html and "http" not in html.split("</style>")[1]
    # resumed: nothing finished is scanned again; --retry-failed retries the errors only, in new folders
    again = run_cli("fleet", "--from", listing, "--out", out, "--no-plugins")
    assert again.exit_code == 1 and json.loads((out / "fleet.json").read_text())["targets"] == document["targets"]
    (root / "missing").mkdir(exist_ok=True)
    retried = run_cli("fleet", "--from", listing, "--out", out, "--no-plugins", "--retry-failed")
    after = {Path(r["target"]).name: r for r in json.loads((out / "fleet.json").read_text())["targets"]}
    assert retried.exit_code == 1 and after["missing"]["attempts"] == 2 and after["canary:clean"]["attempts"] == 1
    assert after["canary:clean"]["folder"] == by["canary:clean"]["folder"] and after["missing"]["status"] == "error"


@pytest.mark.slow
def test_fleet_html_in_headless_chromium(run_cli, fleet_targets: tuple[Path, Path], tmp_path: Path) -> None:
    """One self-contained page: no request leaves it, and its sorting script is the only one the CSP allows
    (a blocked or broken script is a console error)."""
    from browser import visit

    out = tmp_path / "fleet"
    assert run_cli("fleet", "canary:clean", "./no-such-model", "--out", out, "--no-plugins").exit_code == 2
    seen = visit(out / "fleet.html", tmp_path / "fleet.png", tmp_path / "profile")
    assert seen.console_errors == []
    assert all(url.startswith(("file:", "data:")) for url in seen.requests), seen.requests
    assert seen.title.startswith("amdet-audit fleet")


def test_ctrl_c_leaves_a_consistent_fleet_and_the_rerun_finishes_it(tmp_path: Path) -> None:
    from amdet_audit.fleet.executors import InProcess
    from amdet_audit.fleet.outputs import counts
    from amdet_audit.fleet.run import FleetSettings, run_fleet

    def task(spec: dict) -> dict:
        if spec["index"] == 1:  # target "b"
            raise KeyboardInterrupt
        return {"status": "done", "exit_code": 0, "label": "clean", "seconds": 0.0}

    entries = [Entry("a"), Entry("b"), Entry("c")]
    settings = FleetSettings(use_cache=False)
    with pytest.raises(KeyboardInterrupt):
        run_fleet(entries, tmp_path / "f", settings, InProcess(task))
    document = json.loads((tmp_path / "f" / "fleet.json").read_text())
    assert_valid_fleet(document)
    assert document["interrupted"] is True and [r["status"] for r in document["targets"]] == ["done", "pending",
                                                                                               "pending"]
    assert (tmp_path / "f" / "fleet.html").is_file()
    finished = run_fleet(entries, tmp_path / "f", settings, InProcess(lambda spec: task({**spec, "index": 0})))
    assert counts(finished["targets"])["passed"] == 3 and "interrupted" not in finished
    assert finished["targets"][0]["attempts"] == 1  # a was not run again


def test_bad_fleet_input_is_one_line(run_cli, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    for args, message in [(["fleet"], "no targets"), (["fleet", "a", "--out", tmp_path / "busy"], "no fleet.json"),
                          (["fleet", "a", "--jobs", "0", "--out", tmp_path / "n"], "--jobs must be at least 1"),
                          (["fleet", "a", "--search", "fast", "--out", tmp_path / "n"], "--search must be"),
                          (["fleet", "a", "--ray", "local", "--jobs", "2", "--out", tmp_path / "n"], "--jobs is for")]:
        result = run_cli(*args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not ray_available(), reason="ray is not installed (pip install 'amdet-audit[ray]')")
def test_fleet_on_a_local_ray_runtime_and_on_a_cluster(run_cli, fleet_targets: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """The same targets as Ray tasks: first on a local runtime, then on a cluster started here on 127.0.0.1
    and joined by address."""
    root, _ = fleet_targets
    targets = ["canary:backdoored", str(root / "missing-on-ray")]
    local = run_cli("fleet", *targets, "--ray", "local", "--out", tmp_path / "local", "--no-plugins")
    document = json.loads((tmp_path / "local" / "fleet.json").read_text())
    assert local.exit_code == 1, local.stderr
    assert_valid_fleet(document)
    assert document["executor"].startswith("Ray (a local Ray runtime")
    assert document["counts"]["failed"] == 1 and document["counts"]["errors"] == 1
    assert all(r["pid"] != os.getpid() for r in document["targets"] if "pid" in r)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with socket.socket() as probe:  # a free port for the head node
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=240)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        address = next(line.split("'")[1] for line in (started.stdout + started.stderr).splitlines()
                       if "ray start --address=" in line)
        cluster = run_cli("fleet", targets[0], "--ray", address, "--out", tmp_path / "cluster", "--no-plugins",
                          "--scan-cpus", "1")
        document = json.loads((tmp_path / "cluster" / "fleet.json").read_text())
        assert cluster.exit_code == 1, cluster.stderr
        assert address in document["executor"] and document["counts"]["finished"] == 1
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.mark.slow
def test_fleet_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/fleet with two local jobs on the clean canary (from the test cache; no model built)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "fleet"))
    from run_fleet_bench import main

    out = tmp_path / "results.json"
    main(["--work", str(tmp_path / "work"), "--out", str(out), "--targets", "canary:clean", "--modes", "jobs-2",
          "--cache", os.environ["AMDET_AUDIT_CACHE"]])
    (run,) = json.loads(out.read_text())["runs"]
    assert run["mode"] == "jobs-2" and run["exit_code"] == 0 and run["models"] == 1 and run["labels"] == ["clean"]
    assert run["speedup"] == 1.0 and run["models_per_hour"] > 0
