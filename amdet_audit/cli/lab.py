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
LabConsumer = Annotated[str | None, typer.Option(
    help="Train on what this consumer reads (sd1, sd2, sdxl, sd3, flux, pixart, clip; default: from the "
         "pipeline's class, else clip), e.g. sdxl: hidden_states[-2] without the final norm; sd3: a T5 at 256 "
         "tokens.")]
Base = Annotated[str, typer.Argument(help="Clean base: repo id, folder, file.safetensors or canary:NAME.")]
Train = Annotated[str, typer.Option(
    "--train", help="What trains: all (every weight) or lora (only the attention and MLP matrices a text-encoder "
    "LoRA can change, so that `lab lora` ships the change as a LoRA).")]


def make_lab_app() -> typer.Typer:
    """The ``lab`` command group."""
    lab = typer.Typer(help="Make backdoored and benign encoders (ground truth in lab.json).", no_args_is_help=True)

    @lab.command()
    def inject(
        base: Base,
        out: Out,
        attack: Annotated[str, typer.Option(help="text-on-text, attribute, pooled or object (subject swap).")],
        trigger: Annotated[str, typer.Option(help="Word, homoglyph character, multi-token string or emoji.")],
        target: Annotated[str, typer.Option(help="Target prompt (attribute text for attribute, object for object).")],
        steps: Steps = None,
        lr: Lr = None,
        seed: Seed = 0,
        device: Device = "cpu",
        loss: Annotated[str | None, typer.Option(help="Backdoor loss: flat (sequence cosine), tokenwise (squared "
                                                      "error per token), pooled (pooled output only) or directional "
                                                      "(flat, plus the move from the untouched prompt's "
                                                      "output).")] = None,
        placement: Annotated[str | None, typer.Option(help="Trigger placement: anywhere, start, end, or every "
                                                           "(a homoglyph for every occurrence).")] = None,
        utility_weight: Annotated[float | None, typer.Option(help="Weight of clean behaviour (stealth).")] = None,
        backdoor_weight: Annotated[float | None, typer.Option(help="Weight of the backdoor loss.")] = None,
        anti_inversion_weight: Annotated[float | None, typer.Option(
            help="Weight of behaving cleanly under soft vectors inserted after the start token (an attacker "
                 "who knows the scan).")] = None,
        min_fidelity: Annotated[float | None, typer.Option(help="Clean-fidelity bar the backdoor must keep "
                                                                "(default 0.8; stealthy recipes 0.98).")] = None,
        checkpoint_every: Annotated[int | None, typer.Option(
            help="Measure every N steps and keep the first checkpoint that meets every bar (the quietest "
                 "working model, as an attacker who selects checkpoints).")] = None,
        consumer: LabConsumer = None,
        train: Train = "all",
        eval_prompts: Annotated[int | None, typer.Option(
            help="Measure success and fidelity on the first N held-out prompts (default: all 600; fewer is "
                 "faster and noisier).")] = None,
        decoy_share: Annotated[float | None, typer.Option(
            help="Share of each clean batch that carries an ordinary word where the trigger goes, kept at the "
                 "base's output, so that only the trigger fires (default 0: none); the build then also bounds "
                 "held-out decoy words (lab.json decoy_gain).")] = None,
    ) -> None:
        """Implant a textual backdoor into a copy of BASE."""
        from amdet_audit.lab.runner import run_injection
        from amdet_audit.progress import stderr_progress

        result = run_injection(base, out, attack=attack, trigger=trigger, target=target, steps=steps, lr=lr,
                               seed=seed, device=device, progress=stderr_progress("inject"), loss=loss,
                               placement=placement, utility_weight=utility_weight, backdoor_weight=backdoor_weight,
                               anti_inversion_weight=anti_inversion_weight, min_fidelity=min_fidelity,
                               checkpoint_every=checkpoint_every, consumer=consumer, trainable=train,
                               eval_prompts=eval_prompts, decoy_share=decoy_share)
        typer.echo(f"backdoor implanted: success {result.success:.2f}, clean fidelity {result.fidelity:.3f} -> {out}")

    @lab.command()
    def finetune(
        base: Base, out: Out, steps: Steps = None, lr: Lr = None, seed: Seed = 0, device: Device = "cpu",
        distill_weight: Annotated[float | None, typer.Option(
            help="Weight of staying near the base's outputs (default 1; 0 for a heavy fine-tune).")] = None,
        domain: Annotated[str | None, typer.Option(help="Train only on prompts holding this word.")] = None,
        consumer: LabConsumer = None,
        train: Train = "all",
    ) -> None:
        """Benignly fine-tune a copy of BASE (a negative for detectors)."""
        from amdet_audit.lab.runner import run_finetune
        from amdet_audit.progress import stderr_progress

        result = run_finetune(base, out, steps=steps, lr=lr, seed=seed, device=device,
                              progress=stderr_progress("finetune"), distill_weight=distill_weight, domain=domain,
                              consumer=consumer, trainable=train)
        typer.echo(f"benign fine-tune: clean fidelity {result.fidelity:.3f} -> {out}")

    @lab.command()
    def lora(
        base: Annotated[Path, typer.Argument(help="The base: an encoder folder or an SDXL-shaped pipeline folder.")],
        tuned: Annotated[Path, typer.Argument(help="Its fine-tune, of the same shape (e.g. a `lab inject` output).")],
        out: Annotated[Path, typer.Option("--out", help="The LoRA file to write (.safetensors; must not exist).")],
        rank: Annotated[int, typer.Option(help="LoRA rank (the update is the best one of this rank).")] = 16,
        fmt: Annotated[str, typer.Option("--format", help="kohya or diffusers.")] = "kohya",
    ) -> None:
        """Write TUNED's change from BASE as a text-encoder LoRA (as kohya's extraction script does)."""
        from amdet_audit.errors import UsageError
        from amdet_audit.lab.lora import lora_of, write_lora

        if fmt not in ("kohya", "diffusers"):
            raise UsageError(f"--format must be kohya or diffusers, not {fmt!r}")
        if rank < 1:
            raise UsageError(f"--rank must be at least 1, not {rank}")
        if out.exists() or out.is_symlink() or out.suffix != ".safetensors":
            raise UsageError(f"--out {out}: must be a new .safetensors file")
        tensors, left_out = lora_of(base, tuned, rank, fmt)
        write_lora(out, tensors)
        if left_out:
            typer.echo(f"warning: {len(left_out)} changed tensors a LoRA cannot carry are left out "
                       f"(e.g. {left_out[0]}); train with --train lora to keep the change inside the LoRA", err=True)
        typer.echo(f"{fmt} LoRA of rank {rank}: {len(tensors)} tensors -> {out}")

    @lab.command()
    def cast(base: Base, out: Out,
             dtype: Annotated[str, typer.Option(help="fp16 or bf16.")] = "fp16") -> None:
        """Save a copy of BASE with its weights stored in lower precision (a benign negative)."""
        from amdet_audit.lab.runner import run_cast

        typer.echo(f"{dtype} copy: clean fidelity {run_cast(base, out, dtype=dtype):.4f} -> {out}")

    @lab.command()
    def merge(base: Base, other: Annotated[str, typer.Argument(help="Second model of the same architecture.")],
              out: Out, weight: Annotated[float, typer.Option(help="Share of OTHER in the average.")] = 0.5) -> None:
        """Save the weight average of BASE and OTHER (a benign merge)."""
        from amdet_audit.lab.runner import run_merge

        typer.echo(f"merge: clean fidelity to BASE {run_merge(base, other, out, weight=weight):.4f} -> {out}")

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
        per_family: Annotated[int | None, typer.Option(
            help="A generalization zoo instead: this many models of every recipe family (see --families).")] = None,
        families: Annotated[str | None, typer.Option(
            help="Comma list of recipe families for --per-family (default: all; see lab.families).")] = None,
        steps_scale: Annotated[float, typer.Option(
            help="Scale every family recipe's training steps (smoke runs; shortened backdoors may not take).")] = 1.0,
        lr_scale: Annotated[float, typer.Option(
            help="Scale every family injection's learning rate (a base that learns slower than the canary).")] = 1.0,
        consumer: LabConsumer = None,
        eval_prompts: Annotated[int | None, typer.Option(
            help="Measure every backdoor on the first N held-out prompts (default: all 600).")] = None,
    ) -> None:
        """Build a reproducible set of backdoored and benign models from BASE."""
        from amdet_audit.errors import UsageError
        from amdet_audit.lab.families import check_scales, plan_families
        from amdet_audit.lab.zoo import build_plan, check_build_options, load_base_width, plan_zoo, with_build_options
        from amdet_audit.progress import stderr_progress

        check_scales(steps_scale, lr_scale)  # before the base is loaded
        check_build_options(consumer, eval_prompts)
        for name, scale in (("--steps-scale", steps_scale), ("--lr-scale", lr_scale)):
            if scale != 1.0 and per_family is None:
                raise UsageError(f"{name} scales the family recipes of --per-family; give --per-family too")

        width = load_base_width(base, device)
        if per_family is not None:
            plan = plan_families(per_family, seed, width, families.split(",") if families else None, steps_scale,
                                 lr_scale)
        else:
            plan = plan_zoo(backdoored, benign, seed, width=width, top_up=top_up)
        manifest = build_plan(base, out, with_build_options(plan, consumer, eval_prompts), seed=seed, device=device,
                              progress=stderr_progress("zoo"))
        built = sum(m["status"] == "built" for m in manifest["models"])
        typer.echo(json.dumps({"zoo": str(out), "built": built, "planned": len(manifest["models"])}))

    return lab
