"""One backoff formula for the whole package (watches, API retries, the work queue's errors, transfers, the local
node's kubelet back-off): exponential, capped, with jitter.

`delay(attempt)` is `min(cap, base * 2**attempt)` spread by jitter: `spread` 0.25 gives +-25% around it (retries
of one thing, so its waits still grow), `full=True` gives anything from 0 to it (many clients retrying at once
spread out the most). `Backoff` counts consecutive failures for a caller that retries one thing in a loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Rng = Callable[[], float]


def delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    *,
    spread: float = 0.25,
    full: bool = False,
    rng: Rng = random.random,
) -> float:
    """Seconds to wait before retry `attempt` (0 for the first retry)."""
    raw = min(cap_s, base_s * float(2 ** max(0, min(attempt, 30))))
    if full:
        return raw * float(rng())
    return raw * (1.0 - spread + 2.0 * spread * float(rng()))


class Backoff:
    """Consecutive failures of one thing and the wait each asks for; `reset` on success."""

    def __init__(
        self, base_s: float, cap_s: float, *, spread: float = 0.25, rng: Rng = random.random
    ) -> None:
        self.base_s, self.cap_s, self.spread, self.rng = base_s, cap_s, spread, rng
        self.failures = 0

    def next(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self.failures += 1
        return delay(self.failures - 1, self.base_s, self.cap_s, spread=self.spread, rng=self.rng)

    def reset(self) -> None:
        self.failures = 0
