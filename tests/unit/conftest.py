"""Unit tests are pure policy-core tests: they must never start (or even import) Ray."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest


def _boom(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("unit tests must not start Ray (ray.init was called)")


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    had_ray = "ray" in sys.modules
    if had_ray:  # imported by some other suite in the same session: make starting it fail loudly
        monkeypatch.setattr(sys.modules["ray"], "init", _boom)
    yield
    if not had_ray:
        assert "ray" not in sys.modules, "a unit test (or the code under test) imported ray"
