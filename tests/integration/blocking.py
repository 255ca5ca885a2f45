"""A handler for the runtime tests that ignores every request to stop: a plain function blocked in
a sleep, as a stuck model call would be. Referenced by import path."""

from __future__ import annotations

import time
from typing import Any


def block(payload: dict[str, Any]) -> str:
    time.sleep(float(payload.get("s", 60.0)))
    return "woke"
