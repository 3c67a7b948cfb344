"""Hub targets against a real HTTP server on 127.0.0.1 that the real huggingface_hub client talks to.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import: every resolve runs in a subprocess with its own
environment (endpoint, HF_HOME, token) and prints its results as JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hub_server import HubRepo, HubServer, read_folder

from amdet_audit.errors import UsageError
from amdet_audit.sources.hub import parse_repo_ref, plan_download

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
SECRET = "secret-xyz"

CLIENT = r"""
import json, sys
from pathlib import Path
from amdet_audit.errors import AmdetError
from amdet_audit.sources import resolve
from amdet_audit.sources.hub import parse_repo_ref, resolve_hub

results = []
for call in json.loads(sys.argv[1]):
    ref = call.pop("ref")
    if "cache_dir" in call:
        call["cache_dir"] = Path(call["cache_dir"])
    try:
        if call.pop("via_sources", False):  # the package's TARGET dispatcher
            target = resolve(ref, **call)
        else:
            repo_id, rev = parse_repo_ref(ref)
            target = resolve_hub(repo_id, revision=call.pop("revision", rev), input=ref, **call)
        results.append({"ok": True, **target.to_dict()})
    except AmdetError as err:
        results.append({"ok": False, "error": type(err).__name__, "message": str(err)})
print(json.dumps(results))
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Hub:
    """The repos the server holds, and facts about them for assertions."""

    repos: dict[str, HubRepo]
    plain_a: str  # org/plain tag v1
    plain_b: str  # org/plain main
    weights_a: str  # sha256 of model.safetensors at A
    weights_b: str


@dataclass
class Run:
    """What one client subprocess printed."""

    results: list[dict[str, Any]]
    stdout: str
    stderr: str


def resolve_in_subprocess(endpoint: str, home: Path, calls: list[dict[str, Any]], **env: str) -> Run:
    """Run resolve_hub for each call in a fresh interpreter whose huggingface_hub sees only ``env``."""
    hub_vars = ("HF_", "HUGGING", "TRANSFORMERS_OFFLINE")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(hub_vars)}
    clean |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(calls)],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return Run(json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, proc.stderr)


def tiny_safetensors(value: float) -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.full((2, 2), value)})


@pytest.fixture(scope="module")
def hub_repos(tiny_clip: Path, tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    """org/plain (v1 -> A, main -> B), org/pipe, org/pickle, org/custom, org/gated."""
    import torch

    from amdet_audit.lab.folders import tiny_clip_folder

    torch.set_num_threads(1)
    clip_a = read_folder(tiny_clip)
    clip_b = read_folder(tiny_clip_folder(tmp_path_factory.mktemp("hub") / "b", hidden=32, layers=1, heads=2, seed=7))
    plain = HubRepo()
    a = plain.add_commit(clip_a, "v1")
    b = plain.add_commit({**clip_b, "pytorch_model.bin": b"pickle twin, never fetched"}, "main")

    pipe = {
        **read_folder(tiny_pipeline),
        "vae/config.json": b"{}",
        "vae/diffusion_pytorch_model.safetensors": tiny_safetensors(1.0),
        "unet/diffusion_pytorch_model.bin": b"not fetched",
        "scheduler/scheduler_config.json": b"{}",
        "text_encoder/model.fp16.safetensors": tiny_safetensors(2.0),
    }

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    tokenizer = {name: clip_a[name] for name in TOKENIZER}
    pickle_only = {"config.json": clip_a["config.json"], "pytorch_model.bin": buffer.getvalue(), **tokenizer}

    config = json.loads(clip_a["config.json"])
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomTextModel"}
    custom = {**clip_a, "config.json": json.dumps(config).encode(), "modeling_custom.py": b"raise SystemExit(9)\n"}

    repos = {"org/plain": plain, "org/gated": HubRepo(gated_token=SECRET)}
    for name, files in (("org/pipe", pipe), ("org/pickle", pickle_only), ("org/custom", custom)):
        repos[name] = HubRepo()
        repos[name].add_commit(files, "main")
    repos["org/gated"].add_commit(clip_a, "main")
    return Hub(repos, a, b, sha256(clip_a["model.safetensors"]), sha256(clip_b["model.safetensors"]))


@pytest.fixture(scope="module")
def module_server(hub_repos: Hub) -> Iterator[HubServer]:
    with HubServer(hub_repos.repos) as server:
        yield server


@pytest.fixture
def hub(module_server: HubServer) -> HubServer:
    """The shared server with an empty request log."""
    module_server.clear()
    module_server.fail_status = None
    return module_server


def weights(result: dict[str, Any], path: str = "model.safetensors") -> str:
    return next(f["sha256"] for f in result["files"] if f["path"] == path)


def snapshot_files(result: dict[str, Any]) -> set[str]:
    root = Path(result["root"])
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# -- resolving ------------------------------------------------------------------------------------------------------


def test_plain_repo_at_main_is_pinned_to_the_commit_sha(hub: HubServer, hub_repos: Hub, tmp_path: Path) -> None:
    [res] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/plain", "via_sources": True}]).results
    assert res["ok"], res
    assert (res["kind"], res["repo_id"], res["revision"], res["input"]) == ("hub", "org/plain", "main", "org/plain")
    assert res["commit_sha"] == hub_repos.plain_b and Path(res["root"]).name == hub_repos.plain_b
    assert weights(res) == hub_repos.weights_b
    [comp] = res["components"]
    assert comp["architecture"] == "CLIPTextModel" and comp["weight_format"] == "safetensors"
    assert {f["path"] for f in res["files"]} == {"config.json", "model.safetensors", *TOKENIZER}
    assert res["other_files"] == ["pytorch_model.bin"]
    # the branch name is used once, to resolve it; every later request names the sha
    assert hub.paths()[0] == "/api/models/org/plain/revision/main"
    assert all(hub_repos.plain_b in p for p in hub.paths()[1:])
    assert hub.downloaded("org/plain") == {"config.json", "model.safetensors", *TOKENIZER}
    assert "pytorch_model.bin" not in snapshot_files(res)


def test_revision_pinning_by_tag_by_sha_and_by_branch(hub: HubServer, hub_repos: Hub, tmp_path: Path) -> None:
    a, b = hub_repos.plain_a, hub_repos.plain_b
    calls = [
        {"ref": "org/plain@v1"},
        {"ref": "org/plain", "revision": "v1"},
        {"ref": "hf://org/plain@v1"},
        {"ref": f"org/plain@{a}"},
        {"ref": "hf://org/plain@main"},
    ]
    v1, v1_kw, v1_uri, by_sha, main = resolve_in_subprocess(hub.url, tmp_path, calls).results
    for res in (v1, v1_kw, v1_uri, by_sha):
        assert res["ok"] and res["commit_sha"] == a and weights(res) == hub_repos.weights_a, res
    assert (v1["revision"], by_sha["revision"], v1_uri["input"]) == ("v1", a, "hf://org/plain@v1")
    assert main["commit_sha"] == b and weights(main) == hub_repos.weights_b
    assert hub_repos.weights_a != hub_repos.weights_b
    assert {p for p in hub.paths() if p.startswith("/api/models/org/plain/revision/")} == {
        "/api/models/org/plain/revision/v1",
        f"/api/models/org/plain/revision/{a}",
        "/api/models/org/plain/revision/main",
    }


def test_pipeline_fetches_only_text_encoders_and_tokenizers(hub: HubServer, tmp_path: Path) -> None:
    [res] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/pipe"}]).results
    assert res["ok"], res
    assert res["pipeline_class"] == "StableDiffusionXLPipeline"
    assert [c["name"] for c in res["components"]] == ["text_encoder", "text_encoder_2"]
    assert [c["architecture"] for c in res["components"]] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert Path(res["components"][1]["tokenizer_path"]).name == "tokenizer_2"
    expected = {
        "model_index.json",
        *(f"{enc}/{f}" for enc in ("text_encoder", "text_encoder_2") for f in ("config.json", "model.safetensors")),
        *(f"{tok}/{f}" for tok in ("tokenizer", "tokenizer_2") for f in TOKENIZER),
    }
    assert hub.touched("org/pipe") == expected == snapshot_files(res)
    assert not [p for p in hub.paths() if "/resolve/" in p and ("/unet/" in p or "/vae/" in p)]
    assert "text_encoder/model.fp16.safetensors" in res["other_files"]
    assert {"unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.safetensors"} <= set(res["other_files"])


def test_component_option_fetches_one_encoder(hub: HubServer, tmp_path: Path) -> None:
    calls = [{"ref": "org/pipe", "component": "text_encoder_2"}, {"ref": "org/pipe", "component": "text_encoder_3"}]
    two, unknown = resolve_in_subprocess(hub.url, tmp_path, calls).results
    assert [c["name"] for c in two["components"]] == ["text_encoder_2"]
    assert {p.split("/")[0] for p in hub.touched("org/pipe")} == {"model_index.json", "text_encoder_2", "tokenizer_2"}
    assert unknown["error"] == "UsageError" and "it has: text_encoder, text_encoder_2" in unknown["message"]
    # offline, the whole pipeline is not in the cache: only text_encoder_2 was fetched
    calls = [{"ref": "org/pipe"}, {"ref": "org/pipe", "component": "text_encoder_2"}]
    whole, part = resolve_in_subprocess(hub.url, tmp_path, calls, HF_HUB_OFFLINE="1").results
    assert whole["error"] == "SourceNotFoundError" and "not in the local cache" in whole["message"]
    assert part["ok"] and part["commit_sha"] == two["commit_sha"]


# -- offline --------------------------------------------------------------------------------------------------------


def test_offline_after_download_works_with_the_server_down(hub_repos: Hub, tmp_path: Path) -> None:
    a, b = hub_repos.plain_a, hub_repos.plain_b
    with HubServer(hub_repos.repos) as server:
        url = server.url
        online = resolve_in_subprocess(url, tmp_path, [{"ref": "org/plain"}, {"ref": "org/plain@v1"}]).results
    assert [r["commit_sha"] for r in online] == [b, a]
    calls = [{"ref": "org/plain"}, {"ref": "org/plain@v1"}, {"ref": f"org/plain@{a}"}, {"ref": "org/plain@v9"}]
    by_env = resolve_in_subprocess(url, tmp_path, calls, HF_HUB_OFFLINE="1").results
    assert by_env[0]["other_files"] == ["pytorch_model.bin"]  # from the repo listing cached at download time
    shutil.rmtree(tmp_path / "hub" / "models--org--plain" / "trees")  # without it, plan from the files on disk
    by_arg = resolve_in_subprocess(url, tmp_path, [{**c, "offline": True} for c in calls]).results
    for main, v1, sha, v9 in (by_env, by_arg):
        assert main["ok"] and main["commit_sha"] == b and weights(main) == hub_repos.weights_b, main
        assert v1["commit_sha"] == a == sha["commit_sha"] and weights(v1) == hub_repos.weights_a
        assert main["files"] == online[0]["files"]
        assert v9["error"] == "SourceNotFoundError"
        assert v9["message"] == "'org/plain@v9' is not in the local cache (offline)"


def test_offline_without_a_cache_says_not_cached(hub: HubServer, tmp_path: Path) -> None:
    [res] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/plain"}], HF_HUB_OFFLINE="1").results
    assert res == {
        "ok": False,
        "error": "SourceNotFoundError",
        "message": "'org/plain@main' is not in the local cache (offline)",
    }
    assert hub.paths() == []


# -- errors ---------------------------------------------------------------------------------------------------------


def test_unknown_repo_and_revision_are_not_found(hub: HubServer, tmp_path: Path) -> None:
    repo, rev = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/nope"}, {"ref": "org/plain@v9"}]).results
    assert repo["error"] == "SourceNotFoundError"
    assert repo["message"].startswith(f"repo 'org/nope' not found on {hub.url}")
    assert rev == {"ok": False, "error": "SourceNotFoundError", "message": "revision 'v9' not found in 'org/plain'"}
    assert not [p for p in hub.paths() if "/resolve/" in p]


def test_pickle_only_repo_is_refused_before_download(hub: HubServer, tmp_path: Path) -> None:
    [refused] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/pickle"}]).results
    assert refused["error"] == "PickleRefusedError" and "pytorch_model.bin" in refused["message"]
    assert hub.paths() == ["/api/models/org/pickle/revision/main"]
    assert not (tmp_path / "hub" / "models--org--pickle" / "snapshots").exists()
    [allowed] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/pickle", "allow_pickle": True}]).results
    assert allowed["ok"] and allowed["components"][0]["weight_format"] == "pickle"
    assert "pytorch_model.bin" in {f["path"] for f in allowed["files"]}


def test_custom_code_is_listed_never_downloaded(hub: HubServer, tmp_path: Path) -> None:
    [res] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/custom"}]).results
    assert res["ok"], res
    assert "modeling_custom.py" in res["custom_code"]
    assert any("auto_map" in entry for entry in res["custom_code"])
    assert "modeling_custom.py" not in hub.touched("org/custom") | snapshot_files(res)


def test_token_is_sent_but_never_printed(hub: HubServer, tmp_path: Path) -> None:
    run = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/gated"}], HF_TOKEN=SECRET)
    assert run.results[0]["ok"], run.results
    assert hub.requests and {r.authorization for r in hub.requests} == {f"Bearer {SECRET}"}
    assert SECRET not in run.stdout + run.stderr
    hub.clear()
    [anonymous] = resolve_in_subprocess(hub.url, tmp_path / "anon", [{"ref": "org/gated"}]).results
    assert anonymous["error"] == "HubError" and "token may be needed" in anonymous["message"]
    assert {r.authorization for r in hub.requests} == {None}
    wrong = resolve_in_subprocess(hub.url, tmp_path / "wrong", [{"ref": "org/gated"}], HF_TOKEN="wrong-abc")
    assert wrong.results[0]["error"] == "HubError" and "HF_TOKEN may lack access" in wrong.results[0]["message"]
    assert "wrong-abc" not in wrong.stdout + wrong.stderr


def test_server_failure_and_no_server_are_hub_errors(hub: HubServer, hub_repos: Hub, tmp_path: Path) -> None:
    hub.fail_status = 503
    [failed] = resolve_in_subprocess(hub.url, tmp_path, [{"ref": "org/plain"}]).results
    assert failed["error"] == "HubError" and "answered HTTP 503" in failed["message"]
    gone = HubServer(hub_repos.repos)
    gone.stop()  # its port is closed now
    [down] = resolve_in_subprocess(gone.url, tmp_path, [{"ref": "org/plain"}]).results
    assert down["error"] == "HubError" and down["message"].startswith(f"cannot reach {gone.url}")


# -- parsing and planning (in-process, no network) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", ("org/name", None)),
        ("org/name@v1", ("org/name", "v1")),
        ("hf://org/name", ("org/name", None)),
        ("hf://org/name@refs/pr/3", ("org/name", "refs/pr/3")),
        ("stabilityai/stable-diffusion-xl-base-1.0", ("stabilityai/stable-diffusion-xl-base-1.0", None)),
    ],
)
def test_parse_repo_ref(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_repo_ref(text) == expected


@pytest.mark.parametrize(
    "text", ["name", "org/name/extra", "org//name", "-org/name", "org/na me", "org/name@", "org/a--b", "hf://datasets/o/n"]
)
def test_parse_repo_ref_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="repo|revision|model repos"):
        parse_repo_ref(text)


def test_revision_cannot_escape_the_cache_refs_folder() -> None:
    from amdet_audit.sources.hub import resolve_hub

    with pytest.raises(UsageError, match="not a valid branch"):
        resolve_hub("org/plain", revision="../../etc", offline=True)


def test_plan_takes_the_safetensors_index_and_its_shards_only() -> None:
    listing = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.fp16.safetensors",
        "pytorch_model.bin",
        "spiece.model",
        "tokenizer_config.json",
        "README.md",
    ]
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    plan = plan_download(listing, lambda path: index, label="org/t5")
    assert plan == sorted(
        ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
         "model-00002-of-00002.safetensors", "spiece.model", "tokenizer_config.json"]
    )


def test_a_fleet_pins_a_hub_target_once_and_its_worker_fetches_that_commit(hub: HubServer, hub_repos: Hub,
                                                                           tmp_path: Path) -> None:
    """`amdet-audit fleet` resolves org/plain@main to its commit sha on the driver (one API call, no download);
    the scan then fetches that commit only."""
    hub_vars = ("HF_", "HUGGING", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(hub_vars)}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": str(ROOT), "AMDET_AUDIT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "fleet"
    proc = subprocess.run([sys.executable, "-m", "amdet_audit", "fleet", "org/plain", "--out", str(out),
                           "--checks", "serialization,remote-code,tokenizer", "--no-plugins"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads((out / "fleet.json").read_text())["targets"]
    assert record["pinned"] == f"org/plain@{hub_repos.plain_b}" and record["status"] == "done"
    report = json.loads((out / record["folder"] / "report.json").read_text())
    assert report["target"]["commit_sha"] == hub_repos.plain_b
    assert [p for p in hub.paths() if "/revision/main" in p] == ["/api/models/org/plain/revision/main"]
    assert all("main" not in p for p in hub.paths()[1:])  # the worker asked for the sha only
