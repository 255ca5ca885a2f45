"""Pausing the cyclic garbage collector around bulk work on acyclic objects.

The store builds thousands of short-lived, acyclic containers at once (journal rows, results
columns); the virtual replay allocates an event tuple and a queue entry per step. Each 700
allocations make the collector run, and its older generations walk every object the process
holds (all tasks); paused, it finds them freed again afterwards. The pause is process-wide:
another thread allocating meanwhile is not collected either, for as long as the block takes
(milliseconds for a batch of records, seconds for a long replay)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the block (left as it was found)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
