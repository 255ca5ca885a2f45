"""Handlers: functions that workers run, referenced by a registered name or an import path
(``"pkg.mod:fn"``). A *stepwise* handler is a generator function: each ``yield`` is one step (one
decoded token) and the scheduler may pause it between steps. A stepwise handler that accepts a
``start_step`` keyword can resume elsewhere from a step count (it recomputes its own state);
otherwise a task resumed without its paused generator restarts and the worker drops the outputs
already delivered, so a stream never repeats."""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from raysched.errors import UnknownHandler

__all__ = ["Handler", "HandlerRegistry", "default_registry", "echo", "simulate"]


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Returns its payload."""
    return payload


def simulate(payload: dict[str, Any], start_step: int = 0) -> Generator[str | None, None, str]:
    """A simulated LLM: one prefill step of ``prompt_tokens x prefill_s_per_token``, then one
    yielded token per decode step of ``decode_s_per_token``. Resuming at ``start_step`` > 0 first
    recomputes the prompt and the tokens already generated at the prefill rate (vLLM recompute)."""
    prompt = int(payload.get("prompt_tokens", 0))
    out = int(payload.get("output_tokens", 1))
    pre = float(payload.get("prefill_s_per_token", 0.0002))
    dec = float(payload.get("decode_s_per_token", 0.01))
    if prompt < 0 or out < 0 or pre < 0 or dec < 0:
        raise ValueError("simulate: token counts and step costs must be >= 0")
    if start_step <= 0:
        time.sleep(prompt * pre)
        yield None  # the prefill step produces no token
        start_step = 1
    else:
        time.sleep((prompt + start_step - 1) * pre)
    for i in range(start_step - 1, out):
        time.sleep(dec)
        yield f"tok{i} "
    return "".join(f"tok{i} " for i in range(out))


@dataclass(frozen=True)
class Handler:
    name: str
    fn: Callable[..., Any]
    stepwise: bool
    resumable: bool


def _describe(name: str, fn: Callable[..., Any]) -> Handler:
    stepwise = inspect.isgeneratorfunction(fn)
    try:
        resumable = stepwise and "start_step" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        resumable = False
    return Handler(name, fn, stepwise, resumable)


class HandlerRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, Handler] = {}
        self._aliases: dict[str, str] = {}

    def alias(self, name: str, path: str) -> None:
        """Register ``name`` for the import path ``path``, imported on first use (by workers)."""
        if ":" in name or ":" not in path:
            raise ValueError(f"handler alias {name!r} -> {path!r}: want name -> 'pkg.mod:fn'")
        self._aliases[name] = path

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        if ":" in name:
            raise ValueError("registered names cannot contain ':' (that marks an import path)")
        self._by_name[name] = _describe(name, fn)

    def names(self) -> list[str]:
        return sorted({n for n in self._by_name if ":" not in n} | set(self._aliases))

    def is_registered(self, name: str) -> bool:
        return (name in self._by_name and ":" not in name) or name in self._aliases

    def stepwise(self, kind: str) -> bool | None:
        """Whether ``kind`` is a generator handler, if known without importing anything."""
        h = self._by_name.get(self._aliases.get(kind, kind))
        return None if h is None else h.stepwise

    def resolve(self, kind: str, *, allow_import: bool = True) -> Handler:
        h = self._by_name.get(kind)
        if h is not None:
            return h
        if kind in self._aliases:
            h = self.resolve(self._aliases[kind], allow_import=True)
            self._by_name[kind] = h
            return h
        if ":" not in kind:
            raise UnknownHandler(f"unknown handler {kind!r}; registered: {', '.join(self.names())}")
        if not allow_import:
            raise UnknownHandler(f"handler {kind!r}: import paths are not allowed here")
        mod_name, _, attr = kind.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownHandler(f"cannot import handler {kind!r}: {exc}") from exc
        if not callable(fn):
            raise UnknownHandler(f"handler {kind!r} is not callable")
        h = _describe(kind, fn)
        self._by_name[kind] = h
        return h


def default_registry(aliases: dict[str, str] | None = None) -> HandlerRegistry:
    r = HandlerRegistry()
    r.register("echo", echo)
    r.register("simulate", simulate)
    for name, path in (aliases or {}).items():
        r.alias(name, path)
    return r
