"""One escaping layer per output medium for strings that come from a model (tokens, prompts, file and
component names, finding messages).

A model folder is untrusted: its strings may hold terminal escape sequences, Unicode bidi overrides, rich
markup, HTML or Markdown. Each medium gets its own function; none of them changes what a reader learns, they
only make hidden or active characters visible and inert.

- :func:`visible`: control characters (C0, DEL, C1), bidi controls and other format characters become
  visible escapes such as ``\\x1b`` or ``\\u202e`` (terminal lines, stderr, SARIF messages).
- :func:`terminal`: :func:`visible` plus rich markup escaped (for text passed to a rich console with markup).
- :func:`markdown`: :func:`visible`, HTML specials as entities, Markdown specials backslash-escaped and URL
  schemes broken, so no raw HTML, link, image or autolink comes from a model string.
- :func:`uri_path`: a relative path percent-encoded per RFC 3986 (SARIF ``artifactLocation.uri``).
- :func:`strict_json`: NaN and infinities replaced by null, with the JSON Pointers of the replaced values.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any
from urllib.parse import quote

#: categories shown as escapes: controls, format characters (bidi, zero-width), line/paragraph separators,
#: surrogates and unassigned/private code points
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
MARKDOWN_SPECIALS = frozenset("\\`*_[]|~!")
LINE_START = re.compile(r"^(\s*\d*)([-+=#.)])")
HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def hidden(ch: str) -> bool:
    """Whether ``ch`` would be invisible or act on a terminal or text renderer (not shown as itself), or is a
    space other than the plain one (a look-alike of it): the one definition of hidden characters, used by the
    report escaping and by the tokenizer check."""
    category = unicodedata.category(ch)
    return category in HIDDEN_CATEGORIES or (category == "Zs" and ch != " ")


def escape_char(ch: str) -> str:
    """``\\xNN`` for code points below 256, ``\\uNNNN`` or ``\\UNNNNNNNN`` above."""
    point = ord(ch)
    if point < 0x100:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


def visible(value: object, keep_lines: bool = False) -> str:
    """``str(value)`` with every hidden character (see :func:`hidden`) shown as an escape; tabs and line
    breaks included (so a model string is one visible line) unless ``keep_lines``."""
    text = str(value)
    if text.isprintable():  # fast path: nothing to escape (str.isprintable is False for all of Cc/Cf/Z*)
        return text
    kept = "\n\t" if keep_lines else ""
    return "".join(escape_char(ch) if hidden(ch) and ch not in kept else ch for ch in text)


def terminal(value: object) -> str:
    """:func:`visible` and rich-markup-escaped: safe inside a string printed by a rich console with markup."""
    from rich.markup import escape

    return escape(visible(value))


def markdown(value: object) -> str:
    """Text that renders as itself in (GitHub-flavoured) Markdown, inline or in a table cell: no HTML, no
    emphasis, links, images or autolinks, no line breaks."""
    out = []
    for ch in visible(value):
        if ch in HTML_ENTITIES:
            out.append(HTML_ENTITIES[ch])
        elif ch in MARKDOWN_SPECIALS:
            out.append("\\" + ch)
        elif ch == "@":
            out.append("&#64;")  # breaks e-mail autolinks
        else:
            out.append(ch)
    text = "".join(out).replace("://", "&#58;//")  # breaks scheme autolinks (https://...)
    text = re.sub(r"(?i)\bwww\.", lambda m: m.group(0)[:-1] + "&#46;", text)  # breaks www. autolinks
    return LINE_START.sub(r"\1\\\2", text)  # a heading, list or rule marker at the start stays text


def uri_path(path: str) -> str:
    """A relative URI reference for ``path``: every character outside RFC 3986's unreserved set and ``/`` is
    percent-encoded as UTF-8 (spaces, ``%``, ``?``, ``#``, controls, non-ASCII)."""
    return quote(str(path).replace("\\", "/"), safe="/")


def strict_json(value: Any, pointer: str = "", found: list[str] | None = None) -> tuple[Any, list[str]]:
    """``value`` with every NaN/Infinity float replaced by None; also the JSON Pointers of what was replaced."""
    found = [] if found is None else found
    if isinstance(value, float) and not math.isfinite(value):
        found.append(pointer or "/")
        return None, found
    if isinstance(value, dict):
        return {k: strict_json(v, f"{pointer}/{json_pointer_token(k)}", found)[0] for k, v in value.items()}, found
    if isinstance(value, (list, tuple)):
        return [strict_json(v, f"{pointer}/{i}", found)[0] for i, v in enumerate(value)], found
    return value, found


def json_pointer_token(key: object) -> str:
    """One reference token of a JSON Pointer (RFC 6901): ``~`` as ``~0``, ``/`` as ``~1``."""
    return str(key).replace("~", "~0").replace("/", "~1")


def json_text(document: Any, indent: int | None = 2) -> str:
    """Strict JSON (NaN/Infinity refused) that stays readable and inert in a terminal: non-ASCII text is kept,
    but hidden characters inside strings (bidi controls, separators...) are written as ``\\uXXXX`` escapes."""
    text = json.dumps(document, indent=indent, ensure_ascii=False, allow_nan=False)
    if text.isprintable():
        return text
    return "".join(json_escape(ch) if ch not in "\n " and hidden(ch) else ch for ch in text)


def json_escape(ch: str) -> str:
    """A JSON string escape for one character (a surrogate pair above the BMP)."""
    point = ord(ch)
    if point < 0x10000:
        return f"\\u{point:04x}"
    point -= 0x10000
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"
