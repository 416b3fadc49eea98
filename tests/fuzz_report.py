"""Counts of the fuzz tier (tests/fuzz/test_fuzz_*.py), printed at the end of the run by tests/conftest.py: cases
tried, server errors (5xx: must be 0), crashes (must be 0), messages stored and dead-lettered."""

from __future__ import annotations

from collections import Counter

COUNTS: dict[str, Counter[str]] = {}


def add(tier: str, **counts: int) -> None:
    COUNTS.setdefault(tier, Counter()).update(counts)


def lines() -> list[str]:
    return [f"{tier}: " + ", ".join(f"{name} {value}" for name, value in sorted(counts.items()))
            for tier, counts in sorted(COUNTS.items())]
