"""The ``amdet-audit`` command line: parse, call :mod:`amdet_audit.api`, print, map to an exit code.

Heavy libraries (torch, transformers) are imported inside commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from amdet_audit import __version__
from amdet_audit.errors import AmdetError
from amdet_audit.exit_codes import ExitCode
from amdet_audit.scan.config import DEFAULT_SEED

log = logging.getLogger("amdet_audit")

Revision = Annotated[str | None, typer.Option(help="Hub branch, tag or commit (or TARGET@REV).")]
Component = Annotated[str | None, typer.Option(help="Only this pipeline component, e.g. text_encoder_2.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="config.json for a single .safetensors file.")]
Offline = Annotated[bool, typer.Option("--offline", help="Use the local hub cache only (also HF_HUB_OFFLINE=1).")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Accept pickle weights (they can run code).")]
Format = Annotated[str, typer.Option("--format", help="text (a table) or json (on stdout).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
TokenizerOpt = Annotated[str | None, typer.Option(
    "--tokenizer", help="Tokenizer for a target without one (a lone weights file): a folder with tokenizer files, "
    "or clip (the CLIP vocabulary amdet-audit ships; pads with <|endoftext|> as SD 1.x) or clip-sd2 (pads with "
    "'!' as SD 2.x and SDXL's text_encoder_2).")]
BaseOpt = Annotated[str | None, typer.Option(
    "--base", help="For a text-encoder LoRA (kohya, PEFT, diffusers): the model it was trained on (any TARGET "
    "form). The LoRA is merged onto it and scanned against it (or against --reference).")]
SearchOpt = Annotated[str, typer.Option(
    "--search", help="auto (light on CPU for CLIP-style causal towers and everywhere for BERT-family ones; full on "
    "a GPU and for SigLIP and T5), "
    "full or light (shorter prompts, fewer starts and steps: about three times faster, and judged the "
    "benchmark's 60 lab CLIP models as the full search did: benchmarks/efficacy/light).")]
ConsumerOpt = Annotated[str | None, typer.Option(
    "--consumer", help="Who reads the encoder: sd1, sd2, sdxl, sd3, flux, pixart or clip (default: from "
    "model_index.json's pipeline class, else clip). Decides the layer scanned (SDXL and SD3 feed their CLIPs' "
    "hidden_states[-2]) and a T5's length (SD3 256 tokens, FLUX 512, PixArt 300 with its mask).")]
ReadLayer = Annotated[int | None, typer.Option(
    "--read-layer", help="Clip skip: read hidden_states[N] (N negative; -2 is 'clip skip 2' of the web UIs). "
    "SD 1.x/2.x apply the final LayerNorm after it, SDXL and SD3 do not.")]


Checks = Annotated[str | None, typer.Option(
    "--checks", help="Run only these checks (comma list of check ids; 'assimilation' is the backdoor scan). "
    "E.g. serialization,remote-code,tokenizer runs the file checks only: no model is loaded, seconds. The "
    "selection replaces the policy's required checks: what you select must run, what you leave out is not "
    "required.")]


class VisibleFormatter(logging.Formatter):
    """Log lines with hidden characters (terminal escapes, bidi controls) of model strings shown as escapes."""

    def format(self, record: logging.LogRecord) -> str:
        from amdet_audit.report.escaping import visible

        return visible(super().format(record), keep_lines=True)


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> None:
    """Print one line on stderr and leave with ``code`` (hidden characters of the message shown as escapes)."""
    from amdet_audit.report.escaping import visible

    typer.echo(f"amdet-audit: error: {visible(message)}", err=True)
    raise typer.Exit(int(code))


def split_list(value: str | None) -> list[str] | None:
    """A comma list as a list of its non-empty items; None stays None."""
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def version_callback(value: bool) -> None:
    """--version: print and exit."""
    if value:
        typer.echo(f"amdet-audit {__version__}")
        raise typer.Exit()


# ---- commands (each an importable function; make_app registers them) ------------------------------------


def main_options(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details on stderr.")] = False,
) -> None:
    """Options of every command: --version, --verbose (log lines on stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def scan_command(
    target: Annotated[str, typer.Argument(help="repo id[@rev], hf://..., folder, file.safetensors, canary:NAME")],
    reference: Annotated[str | None, typer.Option(help="The clean base model (any TARGET form).")] = None,
    reference_free: Annotated[bool, typer.Option("--reference-free",
                                                 help="Scan without a reference (weaker).")] = False,
    revision: Revision = None,
    component: Component = None,
    config: ConfigOpt = None,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    seed: Annotated[int, typer.Option(help="Random seed of the search.")] = DEFAULT_SEED,
    device: Device = "cpu",
    out: Annotated[Path | None, typer.Option(help="New folder for report.json and evidence.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy YAML with thresholds (default: bundled).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="text, json or md (on stdout).")] = "text",
    plugins: Annotated[str | None, typer.Option(help="Run only these installed plugins (comma list).")] = None,
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Built-in checks only.")] = False,
    exit_zero: Annotated[bool, typer.Option("--exit-zero",
                                            help="Exit 0 whatever the verdict (report-only jobs).")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Scan even if an identical scan is cached.")] = False,
    plugin_option: Annotated[list[str] | None, typer.Option(
        "--plugin-option", help="KEY=VALUE for plugins, e.g. diffusers.pipeline=PATH (repeatable).")] = None,
    cached_only: Annotated[bool, typer.Option("--cached-only",
                                              help="Never scan: exit 2 unless a cached scan exists.")] = False,
    checks: Checks = None,
    consumer: ConsumerOpt = None,
    read_layer: ReadLayer = None,
    tokenizer: TokenizerOpt = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for the scan (default: one per core). Use 1 per scan when several run at once: "
        "threads competing for the same cores slow every scan down many times over.")] = None,
    search: SearchOpt = "auto",
    base: BaseOpt = None,
) -> None:
    """Scan TARGET's text encoders for a textual backdoor; exit 0 clean, 1 backdoored, 2 error/inconclusive.

    Reports go into a new folder (--out, or amdet-audit-TARGET-TIME): existing files are never overwritten.
    """
    from amdet_audit import api
    from amdet_audit.progress import stderr_progress

    check_format(output_format, ("text", "json", "md"))
    if reference and reference_free:
        fail("--reference and --reference-free contradict each other")
    if plugins is not None and no_plugins:
        fail("--plugins and --no-plugins contradict each other")
    if no_cache and cached_only:
        fail("--no-cache and --cached-only contradict each other")
    selected = split_list(plugins)
    if checks is not None and not split_list(checks):
        fail("--checks takes a comma list of check ids, e.g. serialization,remote-code,tokenizer")
    pairs = [o.partition("=") for o in plugin_option or []]
    if any(not key or not eq for key, eq, _ in pairs):
        fail("--plugin-option takes KEY=VALUE")
    sources = api.SourceOptions(revision=revision, component=component, config=config,
                                offline=offline or None, allow_pickle=allow_pickle, tokenizer=tokenizer, base=base)
    from amdet_audit.audit.policy import load_policy

    options = api.ScanOptions(reference=reference, reference_free=reference_free, device=device, out=out,
                              seed=seed, policy=load_policy(policy), plugins=selected,
                              third_party_plugins=not no_plugins, use_cache=not no_cache,
                              plugin_options={key: value for key, _, value in pairs},
                              cached_only=cached_only, argv=sys.argv[1:], checks=split_list(checks),
                              consumer=consumer, read_layer=read_layer, threads=threads, search=search)
    progress = stderr_progress("scan")
    try:
        report = api.scan(target, sources=sources, options=options, progress=progress)
    finally:
        progress.close()  # no bar is left standing above the verdict
    if output_format == "json":
        from amdet_audit.report.escaping import json_text

        typer.echo(json_text(report.to_dict()))
    elif output_format == "md":
        from amdet_audit.report.markdown import render_markdown

        typer.echo(render_markdown(report.to_dict()))
    else:
        from amdet_audit.cli.console import print_report

        print_report(report)
    if report.exit_code == int(ExitCode.ERROR):
        say_incomplete(report.verdict["reasons"])
    raise typer.Exit(0 if exit_zero else report.exit_code)


def verify_command(
    paths: Annotated[list[Path] | None, typer.Argument(help="Model folders or files in them (as pre-commit "
                                                            "passes them).")] = None,
    scan_missing: Annotated[bool, typer.Option("--scan", help="Scan targets that have no cached scan (slow); "
                                               "default: a missing scan fails (exit 2).")] = False,
    policy: Annotated[Path | None, typer.Option(help="Policy YAML (default: bundled).")] = None,
    reports: Annotated[Path | None, typer.Option(help="Keep each report in a new folder under this one.")] = None,
    reference: Annotated[str | None, typer.Option(help="The clean base model (any TARGET form).")] = None,
    reference_free: Annotated[bool, typer.Option("--reference-free", help="Scan without a reference.")] = False,
    device: Device = "cpu",
    checks: Checks = None,
    consumer: ConsumerOpt = None,
    read_layer: ReadLayer = None,
    tokenizer: TokenizerOpt = None,
    search: SearchOpt = "auto",
) -> None:
    """Gate model files on their audit: one line per model; exit 0 all pass, 1 any fails, 2 any unknown."""
    import tempfile

    from amdet_audit import api
    from amdet_audit.audit.policy import load_policy
    from amdet_audit.cli.verify import audit_each, gate_exit_code, targets_of, unusable_path
    from amdet_audit.report.escaping import visible

    problem = unusable_path(paths or [])
    if problem is not None:
        fail(problem)
    targets = targets_of(paths or [])
    if not targets:
        typer.echo("amdet-audit verify: no model files among the given paths")
        raise typer.Exit(0)
    loaded = load_policy(policy)
    codes = []
    with tempfile.TemporaryDirectory(prefix="amdet-audit-verify-") as scratch:
        root = reports or Path(scratch)
        if reports is not None and reports.exists() and not reports.is_dir():
            fail(f"--reports {reports} is not a folder")

        def options_for(i: int, target: str) -> api.ScanOptions:
            return api.ScanOptions(reference=reference, reference_free=reference_free, device=device,
                                   out=root / f"{i:03d}-{Path(target).name}", policy=loaded,
                                   cached_only=not scan_missing, argv=["scan", target], checks=split_list(checks),
                                   consumer=consumer, read_layer=read_layer, search=search)

        for outcome in audit_each([str(t) for t in targets], options_for, api.SourceOptions(tokenizer=tokenizer)):
            codes.append(outcome.exit_code)
            if outcome.report is None:
                typer.echo(visible(f"{outcome.target}: error: {outcome.error}"))
                continue
            verdict = outcome.report.verdict
            cached = " (cached)" if outcome.report.run["cache"]["hit"] else ""
            reason = f": {verdict['reasons'][0]}" if verdict["exit_code"] else ""
            typer.echo(visible(f"{outcome.target}: {verdict['label']}{cached}{reason}"))
    raise typer.Exit(gate_exit_code(codes))


def inspect_command(
    target: Annotated[str, typer.Argument(help="repo id[@rev], hf://..., folder, file.safetensors, canary:NAME")],
    revision: Revision = None,
    component: Component = None,
    config: ConfigOpt = None,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    output_format: Format = "text",
    device: Device = "cpu",
    consumer: ConsumerOpt = None,
    read_layer: ReadLayer = None,
    tokenizer: TokenizerOpt = None,
    base: BaseOpt = None,
) -> None:
    """Resolve, load and describe TARGET's text encoders (files, digests, architecture, what the consumer reads)
    without scanning."""
    from amdet_audit import api

    check_format(output_format)
    sources = api.SourceOptions(revision=revision, component=component, config=config,
                                offline=offline or None, allow_pickle=allow_pickle, tokenizer=tokenizer, base=base)
    description = api.describe(target, sources=sources, device=device, consumer=consumer, read_layer=read_layer)
    if output_format == "json":
        from amdet_audit.report.escaping import json_text, strict_json

        typer.echo(json_text(strict_json(description.to_dict())[0]))
    else:
        from amdet_audit.cli.console import print_description

        print_description(description)


def report_command(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by amdet-audit scan.")],
    output_format: Annotated[str, typer.Option("--format", help="html, sarif, md or json.")] = "html",
    out: Annotated[Path | None, typer.Option(help="New file to write (default: stdout); never an existing "
                                                  "file or symlink.")] = None,
) -> None:
    """Render an existing report.json again (HTML, SARIF, Markdown) without rescanning."""
    from amdet_audit.outputs import describe_existing, write_new
    from amdet_audit.report.render import load_report, render

    check_format(output_format, ("html", "sarif", "md", "json"))
    if out is not None and (out.exists() or out.is_symlink()):
        fail(f"--out {out} already exists ({describe_existing(out)}); reports never overwrite")
    text = render(load_report(report_file), output_format, folder=report_file.parent)
    if out is None:
        typer.echo(text)
    else:
        write_new(out, text)


def policy_validate(path: Annotated[Path, typer.Argument(help="Policy YAML file.")]) -> None:
    """Check a policy file; an invalid one exits 2 naming the key and line."""
    from datetime import datetime, timezone

    from amdet_audit.audit.policy import load_policy

    policy = load_policy(path)
    today = datetime.now(timezone.utc).date()
    expired = [w for w in policy.waivers if w.expired(today)]
    note = f" ({len(policy.waivers)} waivers, {len(expired)} expired)" if policy.waivers else ""
    typer.echo(f"{path}: valid{note}")
    for w in expired:
        typer.echo(f"{path}:{w.line}: waiver expired on {w.expires.isoformat()}: its finding fails again",
                   err=True)


def policy_show(
    path: Annotated[Path | None, typer.Argument(help="Policy YAML (default: bundled).")] = None,
) -> None:
    """Print the effective policy, defaults filled in (the bundled default when no file is given)."""
    import yaml

    from amdet_audit.audit.policy import effective_policy, load_policy

    policy = load_policy(path)
    typer.echo(f"# effective policy of {policy.source} (defaults filled in)")
    typer.echo(yaml.safe_dump(effective_policy(policy), sort_keys=False, allow_unicode=True))


def policy_init(
    path: Annotated[Path, typer.Argument(help="New policy file to write.")],
    strict: Annotated[bool, typer.Option("--strict", help="Start from the strict policy.")] = False,
) -> None:
    """Write a copy of the bundled default (or strict) policy to a new file, to edit."""
    from amdet_audit.outputs import describe_existing, write_new
    from amdet_audit.resources import bundled

    if path.exists() or path.is_symlink():
        fail(f"{path} already exists ({describe_existing(path)}); policy init never overwrites")
    write_new(path, (bundled("policies") / ("strict.yaml" if strict else "default.yaml")).read_text("utf-8"))
    typer.echo(f"wrote {path}")


def plugins_list(output_format: Format = "text") -> None:
    """Show the plugins (built-in and from the entry-point group amdet_audit), versions and checks."""
    from dataclasses import asdict

    from amdet_audit.plugins import make_manager, plugin_infos

    check_format(output_format)
    infos = plugin_infos(make_manager())
    if output_format == "json":
        typer.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for info in infos:
        typer.echo(f"{info.name}  {info.distribution} {info.version}  checks: {', '.join(info.checks) or '-'}")


def make_app() -> typer.Typer:
    """Build the Typer application from the command functions above (a factory, so tests get a fresh app)."""
    app = typer.Typer(
        name="amdet-audit",
        help="Audit text encoders (CLIP, SD, SDXL...) for textual backdoors before you deploy them.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        rich_markup_mode=None,
    )
    app.callback()(main_options)
    app.command("scan")(scan_command)
    app.command("verify")(verify_command)
    app.command("inspect")(inspect_command)
    app.command("report")(report_command)
    from amdet_audit.cli.fleet import fleet_command

    app.command("fleet")(fleet_command)
    policy_app = typer.Typer(help="Policies: what fails an audit (thresholds, severities, waivers) in YAML.",
                             no_args_is_help=True)
    policy_app.command("validate")(policy_validate)
    policy_app.command("show")(policy_show)
    policy_app.command("init")(policy_init)
    app.add_typer(policy_app, name="policy")
    plugins_app = typer.Typer(help="Plugins: built-in and installed checks.", no_args_is_help=True)
    plugins_app.command("list")(plugins_list)
    app.add_typer(plugins_app, name="plugins")
    from amdet_audit.cli.lab import make_lab_app

    app.add_typer(make_lab_app(), name="lab")
    return app


def say_incomplete(reasons: list[str]) -> None:
    """The reasons an audit could not complete (exit 2), as one line on stderr."""
    from amdet_audit.report.escaping import visible

    typer.echo(f"amdet-audit: inconclusive: {visible('; '.join(reasons) or 'the audit could not complete')}",
               err=True)


def check_format(value: str, allowed: tuple[str, ...] = ("text", "json")) -> None:
    """Reject unknown --format values."""
    if value not in allowed:
        fail(f"--format must be {' or '.join(allowed)}, not {value!r}")


def usage_errors() -> tuple[type[Exception], ...]:
    """Click's ClickException classes: typer >= 0.25 vendors click, older versions use the click package."""
    import click
    from typer.exceptions import TyperException

    return (click.ClickException, TyperException)


def main() -> None:
    """Console-script entry point: run the app, turning known errors into one line and exit code 2."""
    from amdet_audit.report.escaping import visible

    app = make_app()
    try:
        result = app(standalone_mode=False)
    except usage_errors() as err:  # click's usage errors: its own message, exit 2
        err.show()
        sys.exit(int(ExitCode.ERROR))
    except AmdetError as err:
        typer.echo(f"amdet-audit: error: {visible(err)}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("amdet-audit: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except (typer.Abort, EOFError):
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception as err:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("AMDET_AUDIT_DEBUG"):
            raise
        typer.echo(f"amdet-audit: internal error: {type(err).__name__}: {visible(err)} (set AMDET_AUDIT_DEBUG=1 "
                   "for a traceback)", err=True)
        sys.exit(int(ExitCode.ERROR))
    sys.exit(result if isinstance(result, int) else 0)
