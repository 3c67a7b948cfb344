"""Run lab jobs on a BASE given as any TARGET form; write model folders with ``lab.json`` ground truth."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amdet_audit import __version__
from amdet_audit.errors import AmdetError, UsageError
from amdet_audit.lab.decoys import MAX_DECOY_GAIN
from amdet_audit.lab.finetune import FinetuneResult, FinetuneSpec, finetune
from amdet_audit.lab.inject import (
    MAX_UNTRIGGERED_GAIN,
    MIN_FIDELITY,
    MIN_GAIN,
    AttackSpec,
    InjectionResult,
    inject,
    lr_for_width,
)

if TYPE_CHECKING:
    from amdet_audit.sources.model import ResolvedTarget

Progress = Callable[[int, int, str], None]
#: the fewest held-out prompts an injection may be measured on (``--eval-prompts``): one measuring batch
MIN_EVAL_PROMPTS = 64


class InjectionFailedError(AmdetError):
    """Raised when an injected backdoor does not reach its success bar; nothing is written (exit 2: the job
    could not complete, as any error; 1 means an audit failed)."""


def load_base(base: str | Path, device: str = "cpu", consumer: str | None = None):
    """Resolve and load BASE (repo id, folder, file, canary:NAME), read as ``consumer`` reads it (see
    :mod:`amdet_audit.encoders.consumers`; an attacker trains on what the pipeline feeds its denoiser, e.g.
    SDXL's ``hidden_states[-2]``); return (adapter, base provenance)."""
    from amdet_audit.encoders.consumers import consumer_for
    from amdet_audit.encoders.load import load_as_read, read_of
    from amdet_audit.sources import resolve

    resolved = resolve(str(base))
    if len(resolved.components) != 1:
        names = ", ".join(c.name for c in resolved.components)
        raise UsageError(f"{base}: has several text encoders ({names}); pick one folder, e.g. {base}/text_encoder")
    comp = resolved.components[0]
    weights = weights_sha256(resolved)
    chosen = consumer_for(consumer, resolved.pipeline_class)
    read = read_of(chosen, comp)
    provenance = {"input": str(base), "kind": resolved.kind, "commit_sha": resolved.commit_sha,
                  "weights_sha256": weights, "consumer": chosen.record(read)}
    return load_as_read(comp, read, device), provenance


def weights_sha256(resolved: ResolvedTarget) -> dict[str, str]:
    """SHA-256 of each weights file of a resolved target, by its path in the folder (a base's provenance)."""
    return {f.path: f.sha256 for f in resolved.files if f.path.endswith((".safetensors", ".bin", ".pt"))}


def fresh_output(out: Path) -> Path:
    """Refuse to write into an existing non-empty folder (nothing the user had is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def publish(tmp: Path, out: Path) -> None:
    """Move a completed build into place."""
    if out.exists():
        out.rmdir()  # fresh_output guaranteed it is empty
    os.replace(tmp, out)


def lab_record(kind: str, provenance: dict[str, Any], result: dict[str, Any], extra: dict[str, Any] | None) -> dict:
    """The ``lab.json`` content: ground truth, hyper-parameters, base provenance and measured effect."""
    return {"tool_version": __version__, "kind": kind, "base": provenance, **result, **(extra or {})}


def check_eval_prompts(eval_prompts: int | None, available: int) -> None:
    """Refuse an ``--eval-prompts`` outside MIN_EVAL_PROMPTS..``available`` (the held-out prompts there are)."""
    if eval_prompts is not None and not MIN_EVAL_PROMPTS <= eval_prompts <= available:
        raise UsageError(f"--eval-prompts must be between {MIN_EVAL_PROMPTS} and {available}, not {eval_prompts}")


def run_injection(
    base: str | Path, out: Path, *, attack: str, trigger: str, target: str, steps: int | None = None,
    lr: float | None = None, seed: int = 0, device: str = "cpu", progress: Progress | None = None,
    extra: dict[str, Any] | None = None, consumer: str | None = None, eval_prompts: int | None = None,
    **variant: Any,
) -> InjectionResult:
    """Implant a backdoor into BASE and save it to ``out``; raise InjectionFailedError if it did not take.

    eval_prompts: measure on the first this many held-out prompts (default all: fewer is faster and noisier).
    variant: further :class:`AttackSpec` fields (loss, placement, utility_weight, backdoor_weight,
    anti_inversion_weight, min_fidelity, ...); None values keep the defaults.
    """
    from amdet_audit.lab.corpus import lab_prompts

    train, held_out = lab_prompts()
    check_eval_prompts(eval_prompts, len(held_out))
    held_out = held_out[:eval_prompts]
    fresh_output(out)
    teacher, provenance = load_base(base, device, consumer)
    spec = AttackSpec(attack=attack, trigger=trigger, target=target, seed=seed,
                      **({"steps": steps} if steps else {}),
                      lr=lr or lr_for_width(AttackSpec.lr, teacher.hidden_size),
                      **{k: v for k, v in variant.items() if v is not None})
    student, result = inject(teacher, spec, train, held_out, progress)
    if not result.took:
        raise InjectionFailedError(
            f"the {attack} backdoor did not take: {result.success:.0%} of triggered prompts reach the target, "
            f"{result.success_without_backdoor:.0%} without the backdoor, clean fidelity {result.fidelity:.2f}, "
            f"{result.untriggered_gain or 0.0:.0%} more untriggered prompts on target than the base (bars: "
            f"{spec.min_success:.0%}, a gain of {MIN_GAIN:.0%}, fidelity {max(MIN_FIDELITY, spec.min_fidelity)}, "
            f"at most {MAX_UNTRIGGERED_GAIN:.0%} untriggered{decoy_bar(result)}); try other --steps or --lr"
        )
    save_model(student, out, lab_record("backdoored", provenance, result.to_dict(),
                                        {"eval_prompts": len(held_out), **(extra or {})}))
    return result


def decoy_bar(result: InjectionResult) -> str:
    """The decoy part of a failed build's message (empty when the build trained no decoys)."""
    if result.decoy_gain is None:
        return ""
    return f", at most {MAX_DECOY_GAIN:.0%} more decoy prompts on target than the base: {result.decoy_gain:.0%}"


def measure_untriggered(base: str | Path, folder: Path, lab: dict[str, Any], device: str = "cpu",
                        consumer: str | None = None) -> float:
    """The untriggered gain (:func:`~amdet_audit.lab.inject.measure_injection`) of a backdoor in ``folder`` whose
    ``lab.json`` (read into ``lab``) predates the measure: measured on the same held-out prompts, the model as
    saved (measuring reads the model, it does not change it)."""
    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.inject import Targets, check_spec, measure_injection
    from amdet_audit.lab.triggers import Trigger

    teacher, _ = load_base(base, device, consumer)
    student, _ = load_base(folder, device, consumer)
    spec = AttackSpec.from_record(lab["spec"])
    trigger = Trigger.parse(spec.trigger)
    prompts, _ = check_spec(spec, trigger, lab_prompts()[1])
    measured = measure_injection(student, teacher, Targets(teacher, spec), trigger, prompts, seed=spec.seed,
                                 placement=spec.placement)
    return measured[3]


def run_finetune(
    base: str | Path, out: Path, *, steps: int | None = None, lr: float | None = None, seed: int = 0,
    device: str = "cpu", progress: Progress | None = None, extra: dict[str, Any] | None = None,
    consumer: str | None = None, **variant: Any,
) -> FinetuneResult:
    """Benignly fine-tune BASE and save it to ``out``; ``variant``: further :class:`FinetuneSpec` fields
    (distill_weight, domain, batch, ...; None keeps the default)."""
    from amdet_audit.lab.corpus import lab_prompts

    fresh_output(out)
    model, provenance = load_base(base, device, consumer)
    spec = FinetuneSpec(seed=seed, **({"steps": steps} if steps else {}), **({"lr": lr} if lr else {}),
                        **{k: v for k, v in variant.items() if v is not None})
    train, held_out = lab_prompts()
    student, result = finetune(model, spec, train, held_out, progress)
    save_model(student, out, lab_record("benign", provenance, result.to_dict(), extra))
    return result


def save_model(model, out: Path, record: dict[str, Any]) -> None:
    """Write a lab model folder beside ``out`` and move it into place when complete."""
    from amdet_audit.lab.folders import save_encoder_folder

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        save_encoder_folder(model, Path(tmp) / "m", record)
        publish(Path(tmp) / "m", out)


def fidelity_to(model, base, count: int = 256) -> float:
    """Mean cosine of ``model``'s clean held-out read outputs to ``base``'s."""
    import torch

    from amdet_audit.lab.corpus import lab_prompts
    from amdet_audit.lab.variants import flat_cosine

    with torch.no_grad():
        ids = base.tokenize(lab_prompts()[1][:count]).ids
        return float(flat_cosine(model(ids).read.float(), base(ids).read.float()).mean())


def run_cast(base: str | Path, out: Path, *, dtype: str, extra: dict[str, Any] | None = None) -> float:
    """Save BASE with its weights stored in ``dtype`` (a benign precision copy); returns its clean fidelity."""
    from amdet_audit.lab.copies import DTYPES, precision_copy

    fresh_output(out)
    model, provenance = load_base(base)
    twin = precision_copy(model, dtype)
    fidelity = fidelity_to(twin.to(model.device, model.dtype), model)  # the rounded weights, computed as the base's
    twin.to(model.device, DTYPES[dtype])  # back to the stored precision: lossless after the rounding
    record = {"recipe": f"{dtype} copy", "fidelity": fidelity}
    save_model(twin, out, lab_record("benign", provenance, record, extra))
    return fidelity


def run_merge(first: str | Path, second: str | Path, out: Path, *, weight: float = 0.5,
              extra: dict[str, Any] | None = None) -> float:
    """Save the weight average of two models of one architecture (a benign merge); returns its fidelity to FIRST."""
    from amdet_audit.lab.copies import merge

    fresh_output(out)
    a, provenance = load_base(first)
    b, other = load_base(second)
    merged = merge(a, b, weight)
    fidelity = fidelity_to(merged, a)
    record = {"recipe": f"merge of two models, weight {weight} on the second", "second": other, "fidelity": fidelity}
    save_model(merged, out, lab_record("benign", provenance, record, extra))
    return fidelity
