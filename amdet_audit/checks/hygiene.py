"""Built-in file checks that need no model run: custom code and suspicious tokenizer entries.

The serialization check, which like these needs no model run, lives in :mod:`amdet_audit.checks.serialization`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from amdet_audit.checks.base import CheckContext, CheckResult, Finding
from amdet_audit.errors import TokenizerError
from amdet_audit.report.escaping import hidden
from amdet_audit.sources.safe_files import MAX_TOKENIZER_BYTES, read_json


class RemoteCodeCheck:
    """Custom code the target asks its consumer to run (``auto_map`` in configs, ``.py`` files)."""

    id = "remote-code"
    version = "1"
    description = "custom code (auto_map, .py files) that a consumer with trust_remote_code would run"

    def run(self, context: CheckContext) -> CheckResult:
        result = CheckResult(check=self.id, version=self.version, status="ran")
        for item in context.target.custom_code:
            result.findings.append(Finding("remote-code.custom-code", "high",
                                           f"custom code: {item} (never run by this audit)", item))
        result.scores["custom_code_items"] = float(len(context.target.custom_code))
        return result


def scripts(text: str) -> set[str]:
    """Scripts of the letters in ``text`` by Unicode name prefix (LATIN, CYRILLIC, GREEK, ...)."""
    return {unicodedata.name(ch, "?").split()[0] for ch in text if ch.isalpha()}


def added_tokens(folder: Path) -> list[tuple[str, bool]]:
    """(content, special) of the tokens a tokenizer adds beyond its base vocabulary."""
    tokens: dict[str, bool] = {}
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():  # read safely: a regular file, size- and depth-capped (TokenizerError otherwise)
        entries = read_json(tokenizer_json, limit=MAX_TOKENIZER_BYTES, error=TokenizerError).get("added_tokens")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                tokens[str(entry.get("content", ""))] = bool(entry.get("special", False))
    added_json = folder / "added_tokens.json"
    if added_json.is_file():
        for content in read_json(added_json, limit=MAX_TOKENIZER_BYTES, error=TokenizerError, want=(dict, list)):
            tokens.setdefault(str(content), False)
    return sorted(tokens.items())


class TokenizerCheck:
    """Tokens added to the tokenizer that look like triggers: invisible characters, mixed-script look-alikes."""

    id = "tokenizer"
    version = "1"
    description = "added tokens, and added tokens that look like triggers (invisible or mixed-script characters)"

    def run(self, context: CheckContext) -> CheckResult:
        folders = {c.tokenizer_path for c in context.target.components if c.tokenizer_path is not None}
        if not folders:
            return CheckResult(check=self.id, version=self.version, status="skipped", reason="no tokenizer files")
        result = CheckResult(check=self.id, version=self.version, status="ran")
        count = 0
        for folder in sorted(folders):
            try:
                tokens = added_tokens(folder)
            except (OSError, ValueError) as err:
                return CheckResult(check=self.id, version=self.version, status="error",
                                   reason=f"{folder}: unreadable tokenizer file ({err})")
            where = str(folder.relative_to(context.target.root)) if folder.is_relative_to(context.target.root) \
                else str(folder)
            for content, special in tokens:
                if special:
                    continue
                count += 1
                if any(hidden(ch) for ch in content):
                    result.findings.append(Finding("tokenizer.invisible-token", "high",
                                                   f"added token {content!r} holds invisible characters", where))
                elif len(scripts(content)) > 1:
                    result.findings.append(Finding("tokenizer.mixed-script-token", "medium",
                                                   f"added token {content!r} mixes scripts {sorted(scripts(content))}"
                                                   " (a look-alike of a word)", where))
                else:
                    result.findings.append(Finding("tokenizer.added-token", "info", f"added token {content!r}",
                                                   where))
        result.scores["added_tokens"] = float(count)
        return result
