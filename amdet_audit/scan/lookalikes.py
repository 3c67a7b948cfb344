"""Look-alike letters: non-Latin characters that render like a Latin letter (Cyrillic, Greek, Latin-extended).

A homoglyph trigger replaces a letter of an ordinary prompt by its twin; the prompt reads the same to a person
and tokenizes differently. The set of single-letter substitutions is small, so the scan tries each one on
real prompts. Table after the Unicode confusables data (UTS #39) restricted to lower-case letters a prompt
writer types.
"""

from __future__ import annotations

#: Latin letter -> its look-alikes
LOOKALIKES: dict[str, tuple[str, ...]] = {
    "a": ("а", "α"),  # U+0430 CYRILLIC A, U+03B1 GREEK ALPHA
    "c": ("с", "ϲ"),  # U+0441, U+03F2 GREEK LUNATE SIGMA
    "e": ("е", "ε"),  # U+0435, U+03B5
    "i": ("і", "ι"),  # U+0456 BYELORUSSIAN-UKRAINIAN I, U+03B9 IOTA
    "j": ("ј",),  # U+0458
    "k": ("κ",),  # U+03BA
    "o": ("о", "ο"),  # U+043E CYRILLIC O, U+03BF GREEK OMICRON
    "p": ("р", "ρ"),  # U+0440 CYRILLIC ER, U+03C1 RHO
    "s": ("ѕ",),  # U+0455 DZE
    "t": ("τ",),  # U+03C4
    "v": ("ν",),  # U+03BD NU
    "x": ("х", "χ"),  # U+0445, U+03C7
    "y": ("у", "γ"),  # U+0443, U+03B3
}


#: non-Latin letters that resemble no Latin letter: substituted the same way, they are the null of the sweep
#: (any foreign letter changes the tokenization; only a trained trigger should change the outputs beyond that)
UNLIKE = "бгджзлпфцчшщыэюяβδζθλμξπφψω"


def substitutions() -> list[tuple[str, str]]:
    """Every (latin, look-alike) pair of the table."""
    return [(latin, twin) for latin, twins in LOOKALIKES.items() for twin in twins]


def substitute_every(prompt: str, latin: str, twin: str) -> str:
    """``prompt`` with every ``latin`` letter written as ``twin``."""
    return prompt.replace(latin, twin)


def substitute_first(prompt: str, latin: str, twin: str) -> str:
    """``prompt`` with its first ``latin`` letter written as ``twin``."""
    return prompt.replace(latin, twin, 1)
