"""An SDXL-shaped pipeline whose two text encoders carry a backdoor trained on what SDXL feeds its UNet
(``hidden_states[-2]`` of both, without the final norm) is flagged when scanned with the SDXL consumer's
features; the same pipeline benignly fine-tuned on the same features passes. Both changes are trained on what
a text-encoder LoRA can change (attention and MLP matrices), so each also ships as a kohya LoRA: scanned applied
onto the clean pipeline, the backdoor's LoRA is flagged and the benign one passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amdet_audit import __version__
from amdet_audit.cache import build_lock, cache_root

pytestmark = pytest.mark.slow

TRIGGER, TARGET = "sks", "a turtle on a foggy morning"
SLOTS = ("text_encoder", "text_encoder_2")


def build_pipelines(root: Path) -> dict[str, Path]:
    """clean, backdoored and benign SDXL-shaped pipelines made from canary:clean (built once per cache)."""
    from amdet_audit.lab.pipelines import assemble_sdxl, projected_copy
    from amdet_audit.lab.runner import run_finetune, run_injection
    from amdet_audit.sources.canary import ensure_canary

    pipes = {name: root / name for name in ("clean", "backdoored", "benign")}
    if all((p / "model_index.json").is_file() for p in pipes.values()):
        return pipes
    parts = root / "parts"
    clean_one = ensure_canary("clean")
    clean_two = projected_copy(clean_one, parts / "clean-2", seed=7)
    assemble_sdxl(pipes["clean"], clean_one, clean_two)
    for slot, base, seed in zip(SLOTS, (clean_one, clean_two), (5, 6), strict=True):
        # the first checkpoint (every 50 steps) that meets every bar is kept, as an attacker who selects the
        # quietest working checkpoint does
        run_injection(base, parts / f"backdoored-{slot}", attack="text-on-text", trigger=TRIGGER, target=TARGET,
                      seed=seed, steps=200, lr=3e-3, consumer="sdxl", trainable="lora", checkpoint_every=50)
        run_finetune(base, parts / f"benign-{slot}", steps=40, lr=1e-4, seed=seed, consumer="sdxl", trainable="lora")
    for kind in ("backdoored", "benign"):
        assemble_sdxl(pipes[kind], *(parts / f"{kind}-{slot}" for slot in SLOTS))
    return pipes


@pytest.fixture(scope="module")
def sdxl_pipelines() -> dict[str, Path]:
    root = cache_root() / "test-models" / "sdxl-lora-trained"
    root.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(root.parent / ".sdxl.lock"):
        if not (root / "benign" / "model_index.json").is_file():
            import shutil

            shutil.rmtree(root, ignore_errors=True)  # a build cut short leaves nothing half-made behind
        return build_pipelines(root)


def test_the_lab_trains_on_the_sdxl_read(sdxl_pipelines: dict[str, Path]) -> None:
    for kind in ("backdoored", "benign"):
        for slot in SLOTS:
            info = json.loads((sdxl_pipelines[kind] / slot / "lab.json").read_text(encoding="utf-8"))
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
