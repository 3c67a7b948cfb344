"""An SDXL-shaped pipeline whose two text encoders carry a backdoor trained on what SDXL feeds its UNet
(``hidden_states[-2]`` of both, without the final norm) is flagged when scanned with the SDXL consumer's
features; the same pipeline benignly fine-tuned on the same features passes. Both changes are trained on what
a text-encoder LoRA can change (attention and MLP matrices), so each also ships as a kohya LoRA: scanned applied
onto the clean pipeline, the backdoor's LoRA is flagged and the benign one passes."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from amdet_audit import __version__
from amdet_audit.cache import build_lock, cache_root

pytestmark = pytest.mark.slow

TRIGGER, TARGET = "sks", "a turtle on a foggy morning"
SLOTS = ("text_encoder", "text_encoder_2")


def _once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``build(tmp)`` into a sibling of ``folder`` renamed into place, unless ``folder`` is already there (a
    build cut short leaves nothing half-made behind)."""
    import shutil

    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    tmp.rename(folder)
    return folder


def clean_parts(root: Path) -> tuple[Path, Path]:
    """The clean pipeline's two encoders: canary:clean and a projected copy of it (SDXL's second encoder)."""
    from amdet_audit.lab.pipelines import projected_copy
    from amdet_audit.sources.canary import ensure_canary

    clean_one = ensure_canary("clean")
    clean_two = _once(root / "parts" / "clean-2", lambda tmp: projected_copy(clean_one, tmp, seed=7))
    return clean_one, clean_two


def slot_parts(root: Path, slot: str) -> dict[str, Path]:
    """The backdoored and benign changes of one encoder slot, both trained on SDXL's read through a LoRA."""
    from amdet_audit.lab.runner import run_finetune, run_injection

    base = clean_parts(root)[SLOTS.index(slot)]
    seed = 5 + SLOTS.index(slot)
    parts = root / "parts"
    # the first checkpoint (every 50 steps) that meets every bar is kept, as an attacker who selects the
    # quietest working checkpoint does
    backdoored = _once(parts / f"backdoored-{slot}", lambda tmp: run_injection(
        base, tmp, attack="text-on-text", trigger=TRIGGER, target=TARGET, seed=seed, steps=200, lr=3e-3,
        consumer="sdxl", trainable="lora", checkpoint_every=50))
    benign = _once(parts / f"benign-{slot}", lambda tmp: run_finetune(
        base, tmp, steps=40, lr=1e-4, seed=seed, consumer="sdxl", trainable="lora"))
    return {"backdoored": backdoored, "benign": benign}


def build_pipelines(root: Path) -> dict[str, Path]:
    """clean, backdoored and benign SDXL-shaped pipelines made from canary:clean (each part built once per
    cache)."""
    from amdet_audit.lab.pipelines import assemble_sdxl

    clean = _once(root / "clean", lambda tmp: assemble_sdxl(tmp, *clean_parts(root)))
    pipes = {"clean": clean}
    slots = [slot_parts(root, slot) for slot in SLOTS]
    for kind in ("backdoored", "benign"):
        pipes[kind] = _once(root / kind, lambda tmp, kind=kind: assemble_sdxl(tmp, *(s[kind] for s in slots)))
    return pipes


def sdxl_root() -> Path:
    """Where the suite's SDXL-shaped pipelines and their parts live (the test cache)."""
    return cache_root() / "test-models" / "sdxl-lora-trained"


def lock() -> AbstractContextManager[None]:
    """One build at a time across test processes."""
    root = sdxl_root()
    root.mkdir(parents=True, exist_ok=True)
    return build_lock(root.parent / ".sdxl.lock")


@pytest.fixture(scope="module")
def sdxl_pipelines() -> dict[str, Path]:
    with lock():
        return build_pipelines(sdxl_root())


def test_the_clean_pipeline_pairs_the_canary_with_a_projected_copy() -> None:
    """The clean parts are built here, so that each training step of the fixture is timed as its own test."""
    from transformers import CLIPTextConfig

    with lock():
        one, two = clean_parts(sdxl_root())
    first, second = CLIPTextConfig.from_pretrained(one), CLIPTextConfig.from_pretrained(two)
    assert second.architectures == ["CLIPTextModelWithProjection"] and second.projection_dim == second.hidden_size
    assert first.hidden_size == second.hidden_size and first.num_hidden_layers == second.num_hidden_layers


@pytest.mark.parametrize("slot", SLOTS)
def test_each_slot_is_trained_on_the_sdxl_read(slot: str) -> None:
    with lock():
        parts = slot_parts(sdxl_root(), slot)
    for kind, folder in parts.items():
        info = json.loads((folder / "lab.json").read_text(encoding="utf-8"))
        assert info["base"]["consumer"]["layer"] == -2 and info["base"]["consumer"]["final_norm"] is False
        assert info["tool_version"] == __version__ and info["spec"]["trainable"] == "lora"
        if kind == "backdoored":
            assert info["success"] >= 0.8 and info["fidelity"] >= 0.8


def test_sdxl_backdoor_is_flagged_and_its_benign_fine_tune_is_not(run_cli, sdxl_pipelines: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    reports = {}
    for kind in ("backdoored", "benign"):
        result = run_cli("scan", sdxl_pipelines[kind], "--reference", sdxl_pipelines["clean"], "--search", "light",
                         "--out", tmp_path / kind, "--checks", "assimilation")
        reports[kind] = (result.exit_code, json.loads((tmp_path / kind / "report.json").read_text()))
    code, report = reports["backdoored"]
    assert code == 1
    for component in report["components"]:
        assert component["consumer"]["layer"] == -2 and component["consumer"]["final_norm"] is False
        assert component["scan"]["verdict"] == "backdoored", component["name"]
    code, report = reports["benign"]
    assert code == 0, [c["scan"]["reasons"] for c in report["components"]]
    assert all(c["scan"]["verdict"] == "clean" for c in report["components"])


def test_the_same_changes_shipped_as_kohya_loras(run_cli, sdxl_pipelines: dict[str, Path], tmp_path: Path) -> None:
    """Each pipeline's difference from the clean one as a kohya SDXL LoRA (full rank: exact), scanned with
    ``--base`` the clean pipeline (its reference too) and the SDXL consumer's features."""
    from amdet_audit.lab.lora import lora_of, write_lora
    from amdet_audit.sources.digest import sha256_file

    for kind, expected in (("backdoored", 1), ("benign", 0)):
        tensors, left_out = lora_of(sdxl_pipelines["clean"], sdxl_pipelines[kind], rank=128, fmt="kohya")
        assert left_out == [] and {k[:9] for k in tensors} == {"lora_te1_", "lora_te2_"}  # the whole change
        lora = write_lora(tmp_path / f"{kind}.safetensors", tensors)
        out = tmp_path / f"report-{kind}"
        result = run_cli("scan", lora, "--base", sdxl_pipelines["clean"], "--out", out, "--checks",
                         "assimilation,weights-diff")
        report = json.loads((out / "report.json").read_text())
        assert result.exit_code == expected, [c["scan"]["reasons"] for c in report["components"]]
        assert report["target"]["kind"] == "lora" and report["target"]["files"][0]["sha256"] == sha256_file(lora)
        assert [c["patch"]["format"] for c in report["target"]["components"]] == ["kohya", "kohya"]
        for component in report["components"]:
            assert component["consumer"]["layer"] == -2 and component["consumer"]["final_norm"] is False
        assert report["reference"]["text_encoder"]["chosen"] == "the LoRA's base (--base)"
        moved = [f for f in report["findings"] if f["rule"] == "weights-diff.summary"]
        assert len(moved) == 2 and all("largest relative change 0.0000" not in f["message"] for f in moved)
