"""``amdet-audit lab ...``: make backdoored and benign encoders for testing detectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

Out = Annotated[Path, typer.Option("--out", help="New output folder (must not exist or be empty).")]
Steps = Annotated[int | None, typer.Option(help="Training steps.")]
Lr = Annotated[float | None, typer.Option(help="Learning rate.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Device = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
Base = Annotated[str, typer.Argument(help="Clean base: repo id, folder, file.safetensors or canary:NAME.")]


def make_lab_app() -> typer.Typer:
    """The ``lab`` command group."""
    lab = typer.Typer(help="Make backdoored and benign encoders (ground truth in lab.json).", no_args_is_help=True)

    @lab.command()
    def inject(
        base: Base,
        out: Out,
        attack: Annotated[str, typer.Option(help="text-on-text, attribute or pooled.")],
        trigger: Annotated[str, typer.Option(help="Word, homoglyph character, multi-token string or emoji.")],
        target: Annotated[str, typer.Option(help="Target prompt (attribute text for --attack attribute).")],
        steps: Steps = None,
        lr: Lr = None,
        seed: Seed = 0,
        device: Device = "cpu",
    ) -> None:
        """Implant a textual backdoor into a copy of BASE."""
        from amdet_audit.lab.runner import run_injection
        from amdet_audit.progress import stderr_progress

        result = run_injection(base, out, attack=attack, trigger=trigger, target=target, steps=steps, lr=lr,
                               seed=seed, device=device, progress=stderr_progress("inject"))
        typer.echo(f"backdoor implanted: success {result.success:.2f}, clean fidelity {result.fidelity:.3f} -> {out}")

    @lab.command()
    def finetune(base: Base, out: Out, steps: Steps = None, lr: Lr = None, seed: Seed = 0,
                 device: Device = "cpu") -> None:
        """Benignly fine-tune a copy of BASE (a negative for detectors)."""
        from amdet_audit.lab.runner import run_finetune
        from amdet_audit.progress import stderr_progress

        result = run_finetune(base, out, steps=steps, lr=lr, seed=seed, device=device,
                              progress=stderr_progress("finetune"))
        typer.echo(f"benign fine-tune: clean fidelity {result.fidelity:.3f} -> {out}")

    @lab.command()
    def zoo(
        base: Base,
        out: Annotated[Path, typer.Option("--out", help="Zoo folder (resumed if it exists).")],
        backdoored: Annotated[int, typer.Option(help="Number of backdoored models.")] = 4,
        benign: Annotated[int, typer.Option(help="Number of benign fine-tunes.")] = 4,
        top_up: Annotated[int, typer.Option(help="Backdoored models planned after the benign ones: tops up a zoo "
                                                 "whose injections did not all take, keeping its recipes.")] = 0,
        seed: Seed = 0,
        device: Device = "cpu",
    ) -> None:
        """Build a reproducible set of backdoored and benign models from BASE."""
        from amdet_audit.lab.zoo import build_zoo
        from amdet_audit.progress import stderr_progress

        manifest = build_zoo(base, out, backdoored=backdoored, benign=benign, seed=seed, device=device, top_up=top_up,
                             progress=stderr_progress("zoo"))
        built = sum(m["status"] == "built" for m in manifest["models"])
        typer.echo(json.dumps({"zoo": str(out), "built": built, "planned": len(manifest["models"])}))

    return lab
