"""Hostile model folders and policies: each is refused with exit 2 and one line, quickly, reading and writing
nothing outside the target.

Every input is generated here from the tiny CLIP fixtures. Cases that once hung or exhausted memory (a FIFO, a
million layers, deep JSON, a YAML alias bomb, a 50 MB policy) run the real CLI in a subprocess with a timeout, so
that a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

WALL_LIMIT_S = 30.0  # a refusal must come this fast, on one shared core


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (or link target) of everything under ``folder``, to prove it was not touched."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "dir" if path.is_dir() else "special"
    return found


def run_tool(tmp_path: Path, *args: str | Path, timeout: float = WALL_LIMIT_S) -> tuple[subprocess.CompletedProcess,
                                                                                        float]:
    """Run ``amdet-audit ARGS`` in a subprocess whose home, caches and working folder all lie in ``tmp_path``."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "AMDET_AUDIT_CACHE": str(home / "cache"),
           "AMDET_AUDIT_CACHE_SCANS": str(home / "scans"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    env.pop("AMDET_AUDIT_DEBUG", None)
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "amdet_audit", *map(str, args)], cwd=home, env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"amdet-audit {' '.join(map(str, args))} still running after {timeout} s")
    return done, time.monotonic() - start


def assert_refused(code: int, stderr: str, *needles: str) -> str:
    """Exit 2 and exactly one stderr line, an error and no traceback, holding every needle."""
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("amdet-audit: error: ") and "internal error" not in lines[0]
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    write_json(folder / "config.json", {**config, **changes})


@pytest.fixture
def model(tiny_clip: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny CLIP folder at tmp/model."""
    return Path(shutil.copytree(tiny_clip, tmp_path / "model"))


@pytest.fixture
def elsewhere(tiny_clip: Path, tmp_path: Path) -> Path:
    """A model outside the target, with an evidence file an escaping scan would overwrite."""
    folder = Path(shutil.copytree(tiny_clip, tmp_path / "elsewhere" / "x"))
    (folder / "pseudo_trigger.safetensors").write_bytes(b"precious")
    return folder


# ---- path escape ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_component_name_that_is_a_path_is_refused(run_cli, tiny_pipeline: Path, elsewhere: Path, tmp_path: Path,
                                                  how: str) -> None:
    pipe = Path(shutil.copytree(tiny_pipeline, tmp_path / "pipe"))
    name = "text_encoder/../../elsewhere/x" if how == "relative" else str(elsewhere)
    index = json.loads((pipe / "model_index.json").read_text())
    write_json(pipe / "model_index.json", {**index, name: ["transformers", "CLIPTextModel"]})
    before = tree_digest(tmp_path / "elsewhere")
    result = run_cli("scan", pipe, "--reference-free", "--out", tmp_path / "out", "--no-plugins")
    assert_refused(result.exit_code, result.stderr, "model_index.json", "not a plain folder name")
    assert tree_digest(tmp_path / "elsewhere") == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["config.json", "vocab.json", "pytorch_model.bin", "model.safetensors"])
def test_symlink_out_of_the_folder_is_refused(run_cli, model: Path, tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$hash:19000:0:99999:7:::\n")
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(secret)
    result = run_cli("inspect", model)
    line = assert_refused(result.exit_code, result.stderr, name, "outside the target folder")
    assert "root:" not in result.stdout + line


def test_symlink_inside_the_folder_is_followed(run_cli, model: Path) -> None:
    (model / "files").mkdir()
    shutil.move(model / "merges.txt", model / "files" / "merges.txt")
    (model / "merges.txt").symlink_to(Path("files") / "merges.txt")
    result = run_cli("inspect", model, "--format", "json")
    assert result.exit_code == 0, result.stderr


def test_dangling_and_looping_links(run_cli, model: Path) -> None:
    (model / "pytorch_model.bin").symlink_to(model / "gone.bin")  # loads nothing: listed, not read
    assert run_cli("inspect", model).exit_code == 0
    (model / "tokenizer_config.json").unlink()
    (model / "tokenizer_config.json").symlink_to("tokenizer_config.json")
    result = run_cli("inspect", model)
    assert_refused(result.exit_code, result.stderr, "tokenizer_config.json")


def test_dangling_weights_file_target_is_one_line(run_cli, model: Path) -> None:
    (model / "x.safetensors").symlink_to(model / "gone.safetensors")
    result = run_cli("inspect", model / "x.safetensors")
    assert_refused(result.exit_code, result.stderr, "x.safetensors", "does not exist")


def test_hub_cache_snapshot_links_into_its_blob_store_only(run_cli, tiny_clip: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / ("a" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for file in sorted(tiny_clip.iterdir()):
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    assert run_cli("inspect", snapshot).exit_code == 0  # the cache layout, pointed at as a local folder
    (tmp_path / "hub" / "other.json").write_text("{}")
    (snapshot / "special_tokens_map.json").unlink()
    (snapshot / "special_tokens_map.json").symlink_to(Path("..", "..", "..", "other.json"))
    result = run_cli("inspect", snapshot)
    assert_refused(result.exit_code, result.stderr, "special_tokens_map.json", "outside the target folder")


def test_symlinked_folder_out_of_the_pipeline_is_refused(run_cli, tiny_pipeline: Path, tmp_path: Path) -> None:
    pipe = Path(shutil.copytree(tiny_pipeline, tmp_path / "pipe"))
    shutil.move(pipe / "tokenizer", tmp_path / "outside-tokenizer")
    (pipe / "tokenizer").symlink_to(tmp_path / "outside-tokenizer", target_is_directory=True)
    result = run_cli("inspect", pipe)
    assert_refused(result.exit_code, result.stderr, "tokenizer", "outside the target folder")


# ---- hangs and memory -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "scan", "verify"])
def test_fifo_tokenizer_config_does_not_hang(model: Path, tmp_path: Path, command: str) -> None:
    (model / "tokenizer_config.json").unlink()
    os.mkfifo(model / "tokenizer_config.json")
    extra = {"inspect": [], "scan": ["--reference-free", "--out", tmp_path / "out", "--no-plugins"],
             "verify": []}[command]
    done, took = run_tool(tmp_path, command, model, *extra)
    assert took < WALL_LIMIT_S
    if command == "verify":  # the gate prints one line per model on stdout
        assert done.returncode == 2 and "a FIFO" in done.stdout and done.stdout.count("\n") == 1, done.stdout
    else:
        assert_refused(done.returncode, done.stderr, "tokenizer_config.json", "a FIFO")


def test_fifo_weights_and_model_index_do_not_hang(model: Path, tiny_pipeline: Path, tmp_path: Path) -> None:
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    done, _ = run_tool(tmp_path, "inspect", model)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    pipe = Path(shutil.copytree(tiny_pipeline, tmp_path / "pipe"))
    (pipe / "model_index.json").unlink()
    os.mkfifo(pipe / "model_index.json")
    done, took = run_tool(tmp_path, "inspect", pipe)
    assert_refused(done.returncode, done.stderr, "model_index.json", "a FIFO")
    assert took < WALL_LIMIT_S


def test_a_million_layers_is_refused_quickly(model: Path, tmp_path: Path) -> None:
    edit_config(model, num_hidden_layers=1_000_000)
    done, took = run_tool(tmp_path, "inspect", model)
    assert_refused(done.returncode, done.stderr, "config.json", "num_hidden_layers", "1000000")
    assert took < WALL_LIMIT_S


def test_more_layers_than_the_weights_hold_is_refused_before_building(model: Path, tmp_path: Path) -> None:
    edit_config(model, num_hidden_layers=500)  # within the cap, but the file holds one layer
    done, took = run_tool(tmp_path, "inspect", model)
    assert_refused(done.returncode, done.stderr, "missing", "encoder.layers.1.")
    assert took < WALL_LIMIT_S


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_deep_json_is_refused_quickly(model: Path, tmp_path: Path, name: str) -> None:
    (model / name).write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    done, took = run_tool(tmp_path, "inspect", model)
    assert_refused(done.returncode, done.stderr, name, "nested deeper than")
    assert took < WALL_LIMIT_S


def test_yaml_alias_bomb_policy_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    policy = tmp_path / "bomb.yaml"
    policy.write_text("\n".join([*lines, "thresholds: *a9", ""]))
    done, took = run_tool(tmp_path, "policy", "validate", policy)
    assert_refused(done.returncode, done.stderr, "bomb.yaml:1", "anchors and aliases")
    assert took < WALL_LIMIT_S


def test_fifty_megabyte_policy_is_refused_quickly(tmp_path: Path) -> None:
    policy = tmp_path / "big.yaml"
    policy.write_text("version: 1\nwaivers:\n" + "  # padding\n" * (50 * 1024 * 1024 // 12))
    done, took = run_tool(tmp_path, "policy", "validate", policy)
    assert_refused(done.returncode, done.stderr, "big.yaml", "more than the 1048576")
    assert took < WALL_LIMIT_S


def test_deep_yaml_and_fifo_policies_are_refused_quickly(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("thresholds: " + "[" * 100_000 + "]" * 100_000 + "\n")
    done, took = run_tool(tmp_path, "policy", "validate", deep)
    assert_refused(done.returncode, done.stderr, "deep.yaml")
    assert took < WALL_LIMIT_S
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    done, took = run_tool(tmp_path, "policy", "validate", fifo)
    assert_refused(done.returncode, done.stderr, "fifo.yaml", "a FIFO")
    assert took < WALL_LIMIT_S


# ---- a gate that passes on nothing -------------------------------------------------------------------------------


def test_verify_on_a_missing_path_fails(run_cli, tmp_path: Path) -> None:
    result = run_cli("verify", tmp_path / "models" / "typo")
    assert_refused(result.exit_code, result.stderr, "typo", "no such file or folder")


def test_verify_on_a_folder_without_a_model_fails(run_cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing here")
    result = run_cli("verify", tmp_path / "empty")
    assert_refused(result.exit_code, result.stderr, "empty", "holds no model")
    nothing = run_cli("verify")
    assert_refused(nothing.exit_code, nothing.stderr, "no paths given")


@pytest.mark.parametrize("command", ["scan", "inspect"])
def test_scan_and_inspect_on_a_missing_path_or_an_empty_folder_fail(run_cli, tmp_path: Path, command: str) -> None:
    missing = run_cli(command, tmp_path / "typo")
    assert_refused(missing.exit_code, missing.stderr, "typo")
    (tmp_path / "empty").mkdir()
    empty = run_cli(command, tmp_path / "empty")
    assert_refused(empty.exit_code, empty.stderr, "empty")


# ---- errors that are one clear line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model_type": ["clip_text_model"]}, "model_type: must be a name"),
        ({"architectures": 5}, "architectures: must be a list of class names"),
        ({"hidden_size": "x"}, "hidden_size: must be a whole number"),
        ({"vocab_size": 10**30}, "vocab_size: "),
        ({"max_position_embeddings": -3}, "max_position_embeddings: -3 is outside"),
        ({"text_config": 3}, "text_config: must be an object"),
    ],
)
def test_config_with_wrong_types_is_one_line(run_cli, model: Path, changes: dict, needle: str) -> None:
    edit_config(model, **changes)
    result = run_cli("inspect", model)
    assert_refused(result.exit_code, result.stderr, "config.json", needle)


def test_lying_safetensors_header_is_one_line(run_cli, model: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}}).encode()
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    result = run_cli("inspect", model)
    assert_refused(result.exit_code, result.stderr, "model.safetensors", "not a readable safetensors file")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("waivers:\n  - check: tokenizer\n    target: x\n    reason: ok\n    owner: me\n    expires: 2099-13-45\n",
         "policy.yaml:6: waivers[0].expires: 'expires' is required, as a date YYYY-MM-DD, not '2099-13-45'"),
        ("thresholds:\n  collapse_gain: .nan\n", "policy.yaml:2: thresholds.collapse_gain: must be a finite number"),
        ("thresholds:\n  anchor_cosine: -.inf\n", "policy.yaml:2: thresholds.anchor_cosine: must be a finite number"),
        ("thresholds:\n  anchor_cosine: " + "9" * 400 + "\n", "policy.yaml: not valid YAML (line 2: number too long"),
    ],
)
def test_bad_policy_values_are_one_line(run_cli, tmp_path: Path, text: str, needle: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    result = run_cli("policy", "validate", policy)
    assert_refused(result.exit_code, result.stderr, needle)
