"""Run lab jobs on a BASE given as any TARGET form; write model folders with ``lab.json`` ground truth."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amdet_audit import __version__
from amdet_audit.errors import AmdetError, UsageError
from amdet_audit.lab.finetune import FinetuneResult, FinetuneSpec, finetune
from amdet_audit.lab.inject import MIN_FIDELITY, MIN_GAIN, AttackSpec, InjectionResult, inject, lr_for_width

Progress = Callable[[int, int, str], None]


class InjectionFailedError(AmdetError):
    """Raised when an injected backdoor does not reach its success bar; nothing is written."""

    exit_code = 1


def load_base(base: str | Path, device: str = "cpu"):
    """Resolve and load BASE (repo id, folder, file, canary:NAME); return (adapter, base provenance)."""
    from amdet_audit.encoders import load_component
    from amdet_audit.sources import resolve

    resolved = resolve(str(base))
    if len(resolved.components) != 1:
        names = ", ".join(c.name for c in resolved.components)
        raise UsageError(f"{base}: has several text encoders ({names}); pick one folder, e.g. {base}/text_encoder")
    comp = resolved.components[0]
    weights = {f.path: f.sha256 for f in resolved.files if f.path.endswith((".safetensors", ".bin", ".pt"))}
    provenance = {"input": str(base), "kind": resolved.kind, "commit_sha": resolved.commit_sha,
                  "weights_sha256": weights}
    return load_component(comp, device=device), provenance


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


def run_injection(
    base: str | Path, out: Path, *, attack: str, trigger: str, target: str, steps: int | None = None,
    lr: float | None = None, seed: int = 0, device: str = "cpu", progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
) -> InjectionResult:
    """Implant a backdoor into BASE and save it to ``out``; raise InjectionFailedError if it did not take."""
    from amdet_audit.lab.canaries import lab_prompts
    from amdet_audit.lab.folders import save_encoder_folder

    fresh_output(out)
    teacher, provenance = load_base(base, device)
    spec = AttackSpec(attack=attack, trigger=trigger, target=target, seed=seed,
                      **({"steps": steps} if steps else {}),
                      lr=lr or lr_for_width(AttackSpec.lr, teacher.hidden_size))
    train, held_out = lab_prompts()
    student, result = inject(teacher, spec, train, held_out, progress)
    if not result.took:
        raise InjectionFailedError(
            f"the {attack} backdoor did not take: {result.success:.0%} of triggered prompts reach the target, "
            f"{result.success_without_backdoor:.0%} without the backdoor, clean fidelity {result.fidelity:.2f} (bars: "
            f"{spec.min_success:.0%}, a gain of {MIN_GAIN:.0%}, fidelity {MIN_FIDELITY}); try other --steps or --lr"
        )
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        save_encoder_folder(student, Path(tmp) / "m", lab_record("backdoored", provenance, result.to_dict(), extra))
        publish(Path(tmp) / "m", out)
    return result


def run_finetune(
    base: str | Path, out: Path, *, steps: int | None = None, lr: float | None = None, seed: int = 0,
    device: str = "cpu", progress: Progress | None = None, extra: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Benignly fine-tune BASE and save it to ``out``."""
    from amdet_audit.lab.canaries import lab_prompts
    from amdet_audit.lab.folders import save_encoder_folder

    fresh_output(out)
    model, provenance = load_base(base, device)
    spec = FinetuneSpec(seed=seed, **({"steps": steps} if steps else {}), **({"lr": lr} if lr else {}))
    train, held_out = lab_prompts()
    student, result = finetune(model, spec, train, held_out, progress)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        save_encoder_folder(student, Path(tmp) / "m", lab_record("benign", provenance, result.to_dict(), extra))
        publish(Path(tmp) / "m", out)
    return result
