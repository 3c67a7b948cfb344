"""Policy files: what fails an audit, read from YAML (``--policy FILE`` or the bundled default).

A policy is read only from a path the user names or from the bundled policies, never from the audited model.
Keys: ``version``, ``fail_on`` (the lowest finding severity that fails), ``severity`` (per rule or check id),
``thresholds`` (the scan's continuous scores), ``required`` (checks that must run), ``reference``
(``required: true`` refuses reference-free scans) and ``waivers``. Every error names the file, line and key.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

from amdet_audit.checks.assimilation import CHECK_ID as SCAN_CHECK
from amdet_audit.checks.assimilation import REFERENCE_FREE
from amdet_audit.checks.base import SEVERITIES
from amdet_audit.errors import ConfigFileError, shown
from amdet_audit.resources import bundled
from amdet_audit.scan.config import Thresholds
from amdet_audit.sources.safe_files import MAX_CONFIG_BYTES, MAX_DEPTH, read_bytes

#: thresholds of earlier releases -> what to write instead
RENAMED_THRESHOLDS = {"collapse_excess": "replaced by collapse_gain (the excess as a share of the reference's room "
                                         "to full collapse; 0.28 on the canary base is about 0.65)"}
POLICY_KEYS = ("version", "fail_on", "severity", "thresholds", "required", "reference", "waivers")
WAIVER_KEYS = ("fingerprint", "check", "target", "reason", "owner", "expires")
MAX_NUMBER_CHARS = 64  # longer YAML numbers are refused (1:2:3... sexagesimal ones grow quadratically to convert)


@dataclass(frozen=True)
class Waiver:
    """An accepted finding: matched by ``fingerprint``, or by ``check`` (check or rule id) and ``target``."""

    reason: str
    owner: str
    expires: date
    fingerprint: str | None = None
    check: str | None = None
    target: str | None = None  # the target as given on the command line, or a sha256 of one of its files
    line: int = 0  # where it is written, for messages

    def expired(self, today: date) -> bool:
        """An expired waiver no longer applies: its finding fails again."""
        return today > self.expires

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (without the line)."""
        return {"fingerprint": self.fingerprint, "check": self.check, "target": self.target, "reason": self.reason,
                "owner": self.owner, "expires": self.expires.isoformat()}


@dataclass(frozen=True)
class Policy:
    """A loaded policy; ``source`` and ``digest`` identify the file it came from."""

    source: str
    digest: str
    fail_on: str = "high"
    severity: dict[str, str] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    required: tuple[str, ...] = (SCAN_CHECK,)
    reference_required: bool = False
    waivers: tuple[Waiver, ...] = ()

    @property
    def incomplete_rules(self) -> dict[str, str]:
        """Rules whose findings keep an audit from passing (exit 2) whatever their severity or waivers, with
        the reason the verdict gives."""
        if not self.reference_required:
            return {}
        return {REFERENCE_FREE: "the policy requires a reference model; this scan ran reference-free"}

    def to_dict(self) -> dict[str, Any]:
        """The report's record of the policy that was applied."""
        return {"source": self.source, "digest": self.digest, "fail_on": self.fail_on, "severity": self.severity,
                "required": list(self.required), "reference_required": self.reference_required}


def key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """The 1-based line of every key and list item of a composed YAML node, by dotted path (``waivers[0].owner``)."""
    lines: dict[str, int] = {}
    value = getattr(node, "value", None)
    if node is None or not isinstance(value, list):
        return lines
    for i, item in enumerate(value):
        if isinstance(item, tuple):  # mapping entry
            key, child = item
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            lines[path] = key.start_mark.line + 1
        else:  # sequence item
            child, path = item, f"{prefix}[{i}]"
            lines[path] = item.start_mark.line + 1
        lines.update(key_lines(child, path))
    return lines


def load_yaml(path: Path) -> tuple[dict, dict[str, int], str]:
    """Parse a YAML mapping; return it, the line of each key path, and the sha256 of the file.

    The file is a regular file of at most 1 MiB; anchors and aliases are refused (no alias bombs), nesting is
    capped at 64 levels, numbers at 64 characters, and a malformed date stays text for the reader to name.
    """
    import yaml

    raw = read_bytes(path, limit=MAX_CONFIG_BYTES, error=ConfigFileError)
    try:
        text = raw.decode("utf-8")
        check_yaml_events(text, path)
        node, data = compose_and_construct(text)
    except ConfigFileError:
        raise
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{path}: not UTF-8 text") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = " ".join(str(getattr(err, "problem", "") or "").split())[:100]
        where = f" (line {mark.line + 1}{': ' + problem if problem else ''})" if mark else ""
        raise ConfigFileError(f"{path}: not valid YAML{where}") from err
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise ConfigFileError(f"{path}: not valid YAML ({type(err).__name__})") from err
    if not isinstance(data, dict) or node is None:
        raise ConfigFileError(f"{path}: a policy must be a YAML mapping")
    return data, key_lines(node), hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=1)
def yaml_loader() -> type:
    """A safe YAML loader (libyaml's when present) whose numbers are length-capped and whose invalid dates
    (``2099-13-45``) stay strings, so that the policy reader reports them at their key and line."""
    import yaml
    from yaml.constructor import ConstructorError, SafeConstructor

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class PolicyLoader(base):  # type: ignore[valid-type, misc]
        """The loader policies are read with."""

    def number(kind: Any) -> Any:
        def construct(loader: Any, node: Any) -> Any:
            if len(node.value) > MAX_NUMBER_CHARS:
                raise ConstructorError(None, None, "number too long", node.start_mark)
            return kind(loader, node)
        return construct

    def timestamp(loader: Any, node: Any) -> Any:
        try:
            return SafeConstructor.construct_yaml_timestamp(loader, node)
        except (ValueError, OverflowError):
            return str(node.value)

    PolicyLoader.add_constructor("tag:yaml.org,2002:int", number(SafeConstructor.construct_yaml_int))
    PolicyLoader.add_constructor("tag:yaml.org,2002:float", number(SafeConstructor.construct_yaml_float))
    PolicyLoader.add_constructor("tag:yaml.org,2002:timestamp", timestamp)
    return PolicyLoader


def check_yaml_events(text: str, path: Path) -> None:
    """Walk the YAML event stream (no tree is built): refuse anchors, aliases and nesting deeper than 64."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml_loader()):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1 if event.start_mark else 1
            raise ConfigFileError(f"{path}:{line}: YAML anchors and aliases (&, *) are not accepted in a policy")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 1
                raise ConfigFileError(f"{path}:{line}: YAML nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def compose_and_construct(text: str) -> tuple[Any, Any]:
    """The node tree (for key lines) and the data of a single YAML document, parsed once."""
    loader = yaml_loader()(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


class PolicyReader:
    """Validates one parsed policy, naming the file, line and key of the first problem."""

    def __init__(self, path: Path, lines: dict[str, int]) -> None:
        self.path, self.lines = path, lines

    def error(self, key: str, message: str) -> ConfigFileError:
        """A ConfigFileError at ``key``'s line (or its nearest written parent's)."""
        probe = key
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0] if "." in probe else probe.rpartition("[")[0]
        named = key if key.isprintable() and key.strip() == key and len(key) <= 80 else shown(key)
        return ConfigFileError(f"{self.path}:{self.lines.get(probe, 1)}: {named}: {message}")

    def severity(self, key: str, value: Any) -> str:
        """A severity name."""
        if value not in SEVERITIES:
            raise self.error(key, f"must be one of {', '.join(SEVERITIES)}, not {value!r}")
        return str(value)

    def mapping(self, key: str, value: Any) -> dict:
        """A mapping (empty when absent)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a mapping")
        return value

    def thresholds(self, values: Any) -> Thresholds:
        """The scan's thresholds; unknown names and non-numbers are errors."""
        known = {f.name for f in fields(Thresholds)}
        for key, value in self.mapping("thresholds", values).items():
            if key in RENAMED_THRESHOLDS:
                raise self.error(f"thresholds.{key}", RENAMED_THRESHOLDS[key])
            if key not in known:
                raise self.error(f"thresholds.{key}", f"unknown threshold; known: {', '.join(sorted(known))}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(f"thresholds.{key}", f"must be a number, not {shown(value)}")
            if not math.isfinite(as_float(value)):
                raise self.error(f"thresholds.{key}", f"must be a finite number, not {shown(value)}")
        return Thresholds(**{k: float(v) for k, v in self.mapping("thresholds", values).items()})

    def required(self, value: Any) -> tuple[str, ...]:
        """Check ids that must run."""
        if value is None:
            return (SCAN_CHECK,)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error("required", "must be a list of check ids")
        return tuple(value)

    def reference(self, value: Any) -> bool:
        """``reference: {required: bool}``."""
        value = self.mapping("reference", value)
        unknown = sorted(set(value) - {"required"})
        if unknown:
            raise self.error(f"reference.{unknown[0]}", "unknown key; known: required")
        required = value.get("required", False)
        if not isinstance(required, bool):
            raise self.error("reference.required", f"must be true or false, not {required!r}")
        return required

    def waiver(self, i: int, value: Any) -> Waiver:
        """One waiver: reason, owner and expires are mandatory; fingerprint, or check and target, say what."""
        key = f"waivers[{i}]"
        value = self.mapping(key, value)
        unknown = sorted(set(value) - set(WAIVER_KEYS))
        if unknown:
            raise self.error(f"{key}.{unknown[0]}", f"unknown key; known: {', '.join(WAIVER_KEYS)}")
        for name in ("reason", "owner"):
            if not isinstance(value.get(name), str) or not value[name].strip():
                raise self.error(f"{key}.{name}" if name in value else key, f"'{name}' is required (non-empty text)")
        expires = value.get("expires")
        if isinstance(expires, datetime):  # YAML reads "2027-01-31 12:00:00" as a datetime: the day counts
            expires = expires.date()
        if isinstance(expires, str):
            try:
                expires = date.fromisoformat(expires)
            except ValueError:
                raise self.error(f"{key}.expires", "'expires' is required, as a date YYYY-MM-DD, not "
                                 f"{shown(expires)}") from None
        if not isinstance(expires, date):
            raise self.error(f"{key}.expires" if "expires" in value else key,
                             "'expires' is required, as a date YYYY-MM-DD")
        fingerprint, check, target = value.get("fingerprint"), value.get("check"), value.get("target")
        for name, text in (("fingerprint", fingerprint), ("check", check), ("target", target)):
            if text is not None and (not isinstance(text, str) or not text):
                raise self.error(f"{key}.{name}", "must be non-empty text (quote it)")
        if fingerprint is None and (check is None or target is None):
            raise self.error(key, "say what is waived: 'fingerprint', or both 'check' and 'target'")
        if fingerprint is not None and (check is not None or target is not None):
            raise self.error(f"{key}.fingerprint", "use either 'fingerprint' or 'check' + 'target', not both")
        return Waiver(reason=value["reason"].strip(), owner=value["owner"].strip(), expires=expires,
                      fingerprint=fingerprint, check=check, target=target, line=self.lines.get(key, 0))

    def waivers(self, value: Any) -> tuple[Waiver, ...]:
        """The waiver list."""
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error("waivers", "must be a list")
        return tuple(self.waiver(i, v) for i, v in enumerate(value))


def as_float(value: float) -> float:
    """``float(value)``, with integers too large for a float as infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def load_policy(path: Path | None = None) -> Policy:
    """The policy in ``path`` (default: the bundled policies/default.yaml); ConfigFileError names key and line."""
    path = path or bundled("policies") / "default.yaml"
    data, lines, digest = load_yaml(path)
    reader = PolicyReader(path, lines)
    unknown = sorted(set(data) - set(POLICY_KEYS))
    if unknown:
        raise reader.error(unknown[0], f"unknown key; known: {', '.join(POLICY_KEYS)}")
    if data.get("version", 1) != 1:
        raise reader.error("version", f"unsupported policy version {data['version']!r} (this release reads 1)")
    severity = {str(k): reader.severity(f"severity.{k}", v)
                for k, v in reader.mapping("severity", data.get("severity")).items()}
    return Policy(source=str(path), digest=digest, fail_on=reader.severity("fail_on", data.get("fail_on", "high")),
                  severity=severity, thresholds=reader.thresholds(data.get("thresholds")),
                  required=reader.required(data.get("required")),
                  reference_required=reader.reference(data.get("reference")),
                  waivers=reader.waivers(data.get("waivers")))


def effective_policy(policy: Policy) -> dict[str, Any]:
    """The policy as YAML-ready data with every default filled in (what ``policy show`` prints)."""
    return {"version": 1, "fail_on": policy.fail_on, "severity": dict(policy.severity),
            "thresholds": asdict(policy.thresholds), "required": list(policy.required),
            "reference": {"required": policy.reference_required},
            "waivers": [{k: v for k, v in w.to_dict().items() if v is not None} for w in policy.waivers]}


def load_thresholds(path: Path | None = None) -> Thresholds:
    """Only the thresholds of a policy (see :func:`load_policy`)."""
    return load_policy(path).thresholds
