"""Pausing the cyclic garbage collector around bulk record building.

The store builds thousands of short-lived, acyclic containers at once (journal rows, results
columns). Each 700 allocations make the collector run, and its older generations walk every
object the scheduler holds (all tasks); paused, it finds them freed again afterwards. The pause
is process-wide: another thread allocating meanwhile is not collected either, for as long as one
batch takes (milliseconds)."""

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
