"""The precision ladder: current level, cool-downs with exponential back-off, given-up levels.

Pure bookkeeping for :class:`~glioseg.training.precision.PrecisionController`. Levels are
ordered safest first (``["fp32", "bf16", "fp16"]`` or a subset); index 0 is the bottom.

- ``fail(step)``: the current level failed; it is blocked for ``cooldown * 2**(n-1)`` steps
  after its n-th failure, or given up for the run after ``max_failures``, and the ladder
  moves one level down.
- ``promotion_target(step)``: the highest level above the current one that can be reached
  through unblocked levels only (after the warm-up that is the top, i.e. the target).
"""
from __future__ import annotations


class Ladder:
    def __init__(self, levels: list[str]):
        if not levels:
            raise ValueError("a precision ladder needs at least one level")
        self.levels = list(levels)
        self.index = 0
        self.failures = {level: 0 for level in self.levels}
        self.blocked_until = {level: 0 for level in self.levels}
        self.given_up: list[str] = []

    @property
    def precision(self) -> str:
        return self.levels[self.index]

    @property
    def at_bottom(self) -> bool:
        return self.index == 0

    def usable(self, level: str, step: int) -> bool:
        return level not in self.given_up and step >= self.blocked_until[level]

    def fail(self, step: int, cooldown: int, max_failures: int) -> int | None:
        """Block the current level and move one down; return the block length (None: given up)."""
        if self.at_bottom:
            raise RuntimeError("the bottom of the precision ladder cannot fall back further")
        failed = self.precision
        self.failures[failed] += 1
        self.index -= 1
        count = self.failures[failed]
        if count >= max_failures:
            self.given_up.append(failed)
            return None
        length = cooldown * 2 ** (count - 1)
        self.blocked_until[failed] = step + length
        return length

    def promotion_target(self, step: int) -> int | None:
        """Index of the highest level reachable upwards through usable levels, or None."""
        best = None
        for index in range(self.index + 1, len(self.levels)):
            if not self.usable(self.levels[index], step):
                break
            best = index
        return best

    def move(self, index: int) -> None:
        self.index = index

    def state_dict(self) -> dict:
        return {"levels": list(self.levels), "index": self.index, "failures": dict(self.failures),
                "blocked_until": dict(self.blocked_until), "given_up": list(self.given_up)}

    @classmethod
    def from_state(cls, state: dict) -> "Ladder":
        ladder = cls(list(state["levels"]))
        ladder.index = int(state["index"])
        ladder.failures = {k: int(v) for k, v in state["failures"].items()}
        ladder.blocked_until = {k: int(v) for k, v in state["blocked_until"].items()}
        ladder.given_up = list(state["given_up"])
        return ladder
