"""Where the time of a training step goes: wall seconds per named stage.

Code marks its parts with `with stage("rasterization"):`; that costs nothing unless a StageTimer is
active in the calling thread (`with timer.active():`). On CUDA, work is asynchronous, so an active
timer synchronizes the device at each stage boundary (which slows the step a little: profile on
purpose, not always).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextvars import ContextVar

STAGES = ("data", "networks", "rasterization", "sampling_query", "decoding", "losses", "backward")

_ACTIVE: ContextVar[StageTimer | None] = ContextVar("npva_stage_timer", default=None)


class StageTimer:
    """Accumulates wall seconds per stage name; `synchronize` (e.g. torch.cuda.synchronize) runs
    before every clock reading."""

    def __init__(self, synchronize: Callable[[], None] | None = None):
        self.synchronize = synchronize or (lambda: None)
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def clock(self) -> float:
        self.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def active(self) -> Iterator[StageTimer]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def take(self) -> dict[str, float]:
        """The seconds accumulated since the last take, then zero."""
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the enclosed code's wall time to `name` in the active timer, if any. A stage inside
    another is counted in both; keep the marked stages disjoint."""
    timer = _ACTIVE.get()
    if timer is None:
        yield
        return
    start = timer.clock()
    try:
        yield
    finally:
        timer.seconds[name] += timer.clock() - start
