""" "Did you mean" suggestions by edit distance (adjacent swaps count as one edit)."""

from __future__ import annotations

import difflib


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, swaps."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def closest(word: str, candidates: list[str]) -> str | None:
    """The candidate nearest to `word`, if it is near enough to be a typo of it."""
    limit = max(1, len(word) // 3)
    scored = [
        (edit_distance(word, c), -difflib.SequenceMatcher(None, word, c).ratio(), c)
        for c in candidates
    ]
    best = min(scored, default=None)
    return best[2] if best and best[0] <= limit else None
