"""Where a trigger goes in a prompt: replace a letter by its homoglyph, or insert a word/string/emoji.

Placement follows what attackers do: ``anywhere`` (a random occurrence or word slot), ``start`` (the first
occurrence, or before the first word), ``end`` (the last occurrence, or appended: a trigger that only ever
appears at the prompt's end, out of reach of a search that inserts right after the start token) and ``every``
(a homoglyph in place of every occurrence of its Latin twin).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from amdet_audit.errors import UsageError

PLACEMENTS = ("anywhere", "start", "end", "every")

# Non-Latin look-alikes of Latin letters (Cyrillic, Greek); a one-character trigger from this table replaces
# one occurrence of its Latin twin, as in the homoglyph attacks of Rickrolling the Artist (Struppek et al., 2023).
HOMOGLYPHS: dict[str, str] = {
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ο": "o", "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "τ": "t",
}


@dataclass(frozen=True)
class Trigger:
    """A trigger string and how it enters a prompt (``replace`` a Latin letter, or ``insert`` as a word)."""

    text: str
    mode: str
    replaces: str | None = None

    @classmethod
    def parse(cls, text: str) -> Trigger:
        """Classify ``text``: a known homoglyph character replaces its twin; anything else is inserted."""
        if not text or not text.strip():
            raise UsageError("the trigger is empty")
        if text in HOMOGLYPHS:
            return cls(text=text, mode="replace", replaces=HOMOGLYPHS[text])
        if text != text.strip():
            raise UsageError(f"trigger {text!r} has leading or trailing spaces")
        return cls(text=text, mode="insert")

    def fits(self, prompt: str) -> bool:
        """Whether the trigger can be placed in ``prompt``."""
        return self.mode == "insert" or self.replaces in prompt

    def apply(self, prompt: str, rng: random.Random, placement: str = "anywhere") -> str:
        """``prompt`` carrying the trigger where ``placement`` says (see the module docstring)."""
        if placement not in PLACEMENTS:
            raise UsageError(f"unknown placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        if self.mode == "replace":
            spots = [i for i, ch in enumerate(prompt) if ch == self.replaces]
            if not spots:
                raise ValueError(f"{prompt!r} has no {self.replaces!r} to replace")
            if placement == "every":
                return prompt.replace(str(self.replaces), self.text)
            i = {"start": spots[0], "end": spots[-1]}.get(placement) if placement != "anywhere" else rng.choice(spots)
            return prompt[:i] + self.text + prompt[i + 1 :]
        words = prompt.split(" ")
        at = {"start": 0, "end": len(words)}.get(placement, None)
        at = rng.randrange(len(words) + 1) if at is None else at
        return " ".join(words[:at] + [self.text] + words[at:])

    def occurs_in(self, prompt: str) -> bool:
        """Whether a clean prompt already contains the trigger (which would poison clean data)."""
        if self.mode == "replace":
            return self.text in prompt
        return f" {self.text} " in f" {prompt} "

    def to_dict(self) -> dict[str, str | None]:
        """JSON-ready view."""
        return {"text": self.text, "mode": self.mode, "replaces": self.replaces}
