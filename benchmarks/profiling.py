"""torch.profiler around a block of a benchmark, shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def profiled(enabled: bool) -> Iterator[torch.profiler.profile | None]:
    """torch.profiler over the enclosed code (CPU and CUDA activity) when enabled, else nothing."""
    if not enabled:
        yield None
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        yield profiler
