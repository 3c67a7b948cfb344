"""report.json -> SARIF 2.1.0 for GitHub code scanning (stable rule ids, security-severity, fingerprints).

Computes nothing: every result comes from the report's gated findings (every check's, the scan's included).
SARIF forbids nothing about nulls, but GitHub rejects some; no value here is ever null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amdet_audit.report.escaping import uri_path, visible

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/amdet-audit/"
#: severity -> (SARIF level, GitHub security-severity score 0-10)
LEVELS = {"critical": ("error", "9.5"), "high": ("error", "8.0"), "medium": ("warning", "5.5"),
          "low": ("note", "3.0"), "info": ("note", "1.0")}
#: the built-in checks' rules: id -> (name, description); a plugin's rules are named by their id
RULE_TEXT = {
    "assimilation.backdoor": ("Textual backdoor in a text encoder",
                              "The assimilation scan found a pseudo-trigger that makes prompts collapse onto one "
                              "target (or shift consistently) in this encoder but not in its clean reference."),
    "assimilation.inconclusive": ("Backdoor scan could not decide",
                                  "The assimilation scan could not reach a verdict for this encoder; it is not "
                                  "shown as a pass."),
    "assimilation.reference-free": ("Scanned without a clean reference",
                                    "The encoder was scanned without a clean reference model: weaker evidence."),
    "assimilation.unnamed-consumer": ("T5 scanned without its pipeline",
                                      "A T5 encoder was read at the lone-encoder length, not at the length the "
                                      "pipeline it ships to reads; name the pipeline with --consumer."),
    "serialization.pickle-file": ("Pickle weight file", ""),
    "serialization.unsafe-import": ("Unsafe import in a pickle", ""),
    "serialization.unknown-import": ("Unrecognised import in a pickle", ""),
    "serialization.unanalysable": ("Pickle that could not be fully analysed", ""),
    "serialization.outside-link": ("Link leaving the model folder", ""),
    "remote-code.custom-code": ("Custom code in the model", ""),
    "tokenizer.invisible-token": ("Invisible added token", ""),
    "tokenizer.mixed-script-token": ("Mixed-script added token", ""),
    "tokenizer.added-token": ("Added token", ""),
}


def drop_nulls(value: Any) -> Any:
    """The same structure without None values (in dicts) or None items (in lists)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    return value


HUB_FILE_URL = "https://huggingface.co/{repo}/blob/{revision}/{path}"
HUB_TREE_URL = "https://huggingface.co/{repo}/tree/{revision}"


def artifact_uri(report: dict[str, Any], path: str) -> str:
    """Where a file of the target really is, as a URI (file names come from the model and may hold anything, so
    every part is percent-encoded per RFC 3986):

    - a local folder: ``<target as given>/<path>``, relative as code scanning expects (``file:`` when the
      target was given as an absolute path); a single file: itself; a LoRA file: the files in its folder;
    - a hub repository: the file's page at the scanned commit (``https://huggingface.co/<repo>/blob/<sha>/...``);
    - a canary or a packaged model, which live in a cache or an installed package: a ``file:`` URI;
    - a location that is already an absolute path (a tokenizer folder found elsewhere): a ``file:`` URI.
    """
    target = report["target"]
    kind, given, root = target["kind"], str(target["input"]), str(target["root"])
    if Path(path).is_absolute():
        return Path(path).as_uri()
    if kind == "hub":
        repo, _, revision = given.removeprefix("hf://").partition("@")
        pinned = uri_path(target.get("commit_sha") or revision or "main")
        if path in ("", "."):
            return HUB_TREE_URL.format(repo=uri_path(repo), revision=pinned)
        return HUB_FILE_URL.format(repo=uri_path(repo), revision=pinned, path=uri_path(path))
    if kind in ("canary", "package"):
        return Path(root, path).as_uri() if Path(root).is_absolute() else uri_path(f"{root}/{path}")
    if kind == "file":
        return Path(given).as_uri() if Path(given).is_absolute() else uri_path(given)
    if kind == "lora" and Path(given).suffix == ".safetensors":  # the LoRA file, its adapter_config.json beside
        given = str(Path(given).parent)
    if Path(given).is_absolute():
        return Path(given, path).as_uri()
    prefix = given.strip("/")
    return uri_path(f"{prefix}/{path}" if prefix and prefix != "." else path)


def rule(rule_id: str, severity: str, name: str, text: str) -> dict[str, Any]:
    """A reportingDescriptor with GitHub's security-severity."""
    level, score = LEVELS[severity]
    return {"id": rule_id, "name": "".join(w.capitalize() for w in name.split()),
            "shortDescription": {"text": name}, "fullDescription": {"text": text},
            "defaultConfiguration": {"level": level},
            "properties": {"security-severity": score, "tags": ["security", "ml-model"]}}


def result(finding: dict[str, Any], uri: str) -> dict[str, Any]:
    """One SARIF result with a location, the finding's fingerprint and, when waived, an accepted suppression."""
    res = {"ruleId": finding["rule"], "level": LEVELS[finding["severity"]][0],
           "message": {"text": visible(f"{finding['check']}: {finding['message']}")},
           "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}}}],
           "partialFingerprints": {"amdetFinding/v1": finding["fingerprint"]}}
    waiver = finding.get("waiver")
    if waiver and waiver["status"] == "applied":
        res["suppressions"] = [{"kind": "external", "status": "accepted",
                                "justification": visible(f"{waiver['reason']} (owner {waiver['owner']}, "
                                                         f"expires {waiver['expires']})")}]
    return res


def component_config(report: dict[str, Any], name: str) -> str:
    """The component's config.json, relative to the target root."""
    root = str(report["target"]["root"]).rstrip("/") + "/"
    for comp in report["target"]["components"]:
        if comp["name"] == name:
            return str(comp["config_path"]).removeprefix(root)
    return "config.json"


def results_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A result per finding above info, or blocking (a component's finding sits at its config.json); info
    findings, such as the weights-diff summary, are for the reviewer's report, not for alerts."""
    out = []
    for finding in report["findings"]:
        if finding["severity"] == "info" and not finding["blocking"]:
            continue
        where = component_config(report, finding["component"]) if finding.get("component") else \
            finding.get("location") or "."
        out.append(result(finding, artifact_uri(report, where)))
    return out


def render_sarif(report: dict[str, Any]) -> dict[str, Any]:
    """The SARIF 2.1.0 log of one report."""
    results = results_of(report)
    rules = []
    for rid in sorted({r["ruleId"] for r in results}):
        severity = next(f["severity"] for f in report["findings"] if f["rule"] == rid)
        name, text = RULE_TEXT.get(rid, (rid, ""))
        rules.append(rule(rid, severity, name, text or f"Finding {rid} of amdet-audit."))
    index = {r["id"]: i for i, r in enumerate(rules)}
    for res in results:
        res["ruleIndex"] = index[res["ruleId"]]
    verdict = report["verdict"]
    run = {"tool": {"driver": {"name": "amdet-audit", "version": report["tool"]["version"],
                               "informationUri": INFORMATION_URI, "rules": rules}},
           "automationDetails": {"id": visible(f"amdet-audit/{report['target']['input']}/")},
           "invocations": [{"executionSuccessful": verdict["exit_code"] != 2, "exitCode": verdict["exit_code"],
                            "arguments": [visible(a) for a in report["run"]["argv"]]}],
           "results": results,
           "properties": {"verdict": verdict["label"], "status": verdict["status"]}}
    return drop_nulls({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]})
