"""What one run measured, and an index of its cases for the targets and the tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The headline case: (shape, dtype, block size).
HEADLINE = ((16, 28, 28, 512), "float32", 7)


@dataclass
class Results:
    """Everything one run measured; a part that was not run stays None."""

    command: str
    commit: str
    keep_prob: float
    repeats: int
    warmup: int
    rate_keys: int
    quick: bool = False
    wall_s: float = math.nan
    matrix: list = field(default_factory=list)
    tuned: dict | None = None
    vmap: list | None = None
    compile: list | None = None  # (variants, size) per input size, the bounded one first
    devices: dict | None = None
    pieces: dict | None = None
    peers: list = field(default_factory=list)
    skipped: set = field(default_factory=set)


class Index:
    """Medians of the matrix cases by (shape, dtype, name, mode)."""

    def __init__(self, cases):
        self.cases = {(c.group[0], c.group[1], c.name, c.mode): c for c in cases}

    def get(self, shape, dtype, name, mode):
        return self.cases.get((tuple(shape), dtype, name, mode))

    def ms(self, shape, dtype, name, mode) -> float:
        case = self.get(shape, dtype, name, mode)
        return case.median_ms if case is not None else math.nan
