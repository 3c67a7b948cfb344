"""The prompts the lab trains and measures on: the scan's corpus generator under the lab's own seed."""

from __future__ import annotations

LAB_CORPUS_SEED = 1  # the lab trains on other prompts than the scan's corpus (seed 0) uses


def lab_prompts() -> tuple[list[str], list[str]]:
    """(train, eval) prompts for lab training."""
    from amdet_audit.data.prompts import corpus, split

    return split(corpus(3000, seed=LAB_CORPUS_SEED))
