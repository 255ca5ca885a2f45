"""The worker: runs handlers for one pool, steps generators, keeps paused ones (like a KV cache),
and reports to the scheduler in batches. A plain class; ``runtime.factory`` makes it an actor.

Each running task gets a thread (handlers may block: sleep, a GPU kernel); the actor's event loop
only moves assignments in and reports out. Reports go to the scheduler *by name*, so a restarted
scheduler keeps receiving them, and they are retried until delivered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from raysched.handlers import Handler, HandlerRegistry
from raysched.runtime.telemetry import gpu_telemetry

__all__ = ["Assignment", "WorkerCore"]

Report = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


@dataclass
class Assignment:
    id: str
    kind: str
    payload: Any
    #: steps already delivered for this task (resume point; outputs up to here are not repeated)
    steps_done: int = 0


@dataclass
class _Run:
    a: Assignment
    handler: Handler
    stop: threading.Event = field(default_factory=threading.Event)
    stop_kind: str = ""  # "pause" | "cancel"
    gen: Generator[Any, Any, Any] | None = None
    steps: int = 0


class WorkerCore:
    def __init__(
        self,
        worker_id: str,
        registry: HandlerRegistry,
        report: Report,
        *,
        slots: int = 1,
        max_paused: int = 4,
        flush_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = worker_id
        self.registry = registry
        self._report = report
        self.slots = slots
        self.max_paused = max_paused
        self.flush_s = flush_s
        self.clock = clock
        self._inbox: asyncio.Queue[Assignment] = asyncio.Queue()
        self._running: dict[str, _Run] = {}
        self._paused: OrderedDict[str, _Run] = OrderedDict()
        self._events: list[dict[str, Any]] = []
        self._acc: dict[str, list[Any]] = {}  # id -> [steps, service_s, outputs]
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.executed = 0

    # -- lifecycle --------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for _ in range(self.slots):
            self._tasks.append(asyncio.create_task(self._slot()))
        self._tasks.append(asyncio.create_task(self._flusher()))

    async def ready(self) -> dict[str, Any]:
        self._ensure_started()
        return {"id": self.id, "telemetry": self.telemetry()}

    async def lease(self) -> None:
        """Returns only when the worker shuts down; the scheduler awaits it to learn of death."""
        self._ensure_started()
        await self._closed.wait()

    async def shutdown(self) -> None:
        for run in list(self._running.values()):
            run.stop_kind = "cancel"
            run.stop.set()
        self._closed.set()

    # -- commands from the scheduler ---------------------------------------------------------
    async def assign(self, items: list[tuple[str, str, Any, int]]) -> int:
        self._ensure_started()
        for tid, kind, payload, steps_done in items:
            self._inbox.put_nowait(Assignment(tid, kind, payload, steps_done))
        return len(items)

    async def stop(self, tid: str, kind: str) -> bool:
        """``pause`` (keep the generator for a later resume here) or ``cancel`` a running task
        between steps; ``cancel`` also drops a paused generator. True if the task was here."""
        run = self._running.get(tid)
        if run is not None:
            run.stop_kind = kind
            run.stop.set()
            return True
        paused = self._paused.pop(tid, None)
        if paused is not None and paused.gen is not None:
            paused.gen.close()
            return True
        return False

    def telemetry(self) -> dict[str, Any]:
        return {
            "worker": self.id,
            "running": len(self._running),
            "paused": len(self._paused),
            "executed": self.executed,
            **gpu_telemetry(),
        }

    # -- execution ------------------------------------------------------------------------------
    async def _slot(self) -> None:
        while True:
            a = await self._inbox.get()
            batch = [a]
            # Consecutive plain tasks run back to back in one thread hop (the cheap path).
            try:
                h = self.registry.resolve(a.kind)
            except Exception as exc:
                self._emit({"t": "fail", "id": a.id, "etype": type(exc).__name__, "msg": str(exc)})
                continue
            if h.stepwise:
                await self._run_stepwise(a, h)
                continue
            while not self._inbox.empty() and len(batch) < 256:
                nxt = self._inbox.get_nowait()
                try:
                    hn = self.registry.resolve(nxt.kind)
                except Exception:
                    self._inbox.put_nowait(nxt)  # reported on its own turn
                    break
                if hn.stepwise:
                    self._inbox.put_nowait(nxt)
                    break
                batch.append(nxt)
            await self._run_plain(batch)

    async def _run_plain(self, batch: list[Assignment]) -> None:
        loop = asyncio.get_running_loop()
        runs = [_Run(a, self.registry.resolve(a.kind)) for a in batch]
        for r in runs:
            self._running[r.a.id] = r

        def work() -> None:
            for r in runs:
                if r.stop.is_set():
                    loop.call_soon_threadsafe(self._emit, {"t": "stopped", "id": r.a.id})
                    continue
                t0 = time.perf_counter()
                ts0 = time.time()
                try:
                    value = r.handler.fn(r.a.payload)
                    ev = {"t": "done", "id": r.a.id, "result": value, "ts0": ts0}
                except Exception as exc:
                    ev = {
                        "t": "fail",
                        "id": r.a.id,
                        "etype": type(exc).__name__,
                        "msg": str(exc),
                        "ts0": ts0,
                    }
                ev["service"] = time.perf_counter() - t0
                loop.call_soon_threadsafe(self._finish, r, ev)

        await asyncio.to_thread(work)

    async def _run_stepwise(self, a: Assignment, h: Handler) -> None:
        loop = asyncio.get_running_loop()
        run = self._paused.pop(a.id, None)
        skip = 0
        if run is None or run.gen is None:
            run = _Run(a, h)
            try:
                if a.steps_done and h.resumable:
                    run.gen = h.fn(a.payload, start_step=a.steps_done)
                    run.steps = a.steps_done
                else:
                    run.gen = h.fn(a.payload)
                    skip = a.steps_done  # re-run from scratch; outputs up to here were delivered
            except Exception as exc:
                self._emit({"t": "fail", "id": a.id, "etype": type(exc).__name__, "msg": str(exc)})
                return
        else:
            run.a = a
            run.stop = threading.Event()
            run.stop_kind = ""
        self._running[a.id] = run
        gen = run.gen
        assert gen is not None

        def drive() -> dict[str, Any]:
            loop.call_soon_threadsafe(self._started, a.id, time.time())
            while not run.stop.is_set():
                t0 = time.perf_counter()
                try:
                    v = next(gen)
                except StopIteration as stop:
                    return {
                        "t": "done",
                        "id": a.id,
                        "result": stop.value,
                        "service": time.perf_counter() - t0,
                    }
                except Exception as exc:
                    return {
                        "t": "fail",
                        "id": a.id,
                        "etype": type(exc).__name__,
                        "msg": str(exc),
                        "service": time.perf_counter() - t0,
                    }
                run.steps += 1
                out = v if run.steps > skip else None
                loop.call_soon_threadsafe(
                    self._step, a.id, run.steps, time.perf_counter() - t0, out
                )
            return {"t": "paused" if run.stop_kind == "pause" else "stopped", "id": a.id}

        ev = await asyncio.to_thread(drive)
        self._finish(run, ev)

    def _finish(self, run: _Run, ev: dict[str, Any]) -> None:
        tid = run.a.id
        self._running.pop(tid, None)
        if ev["t"] == "paused":
            self._paused[tid] = run
            if len(self._paused) > self.max_paused:
                old_id, old = self._paused.popitem(last=False)
                if old.gen is not None:
                    old.gen.close()
                self._emit({"t": "evicted", "id": old_id})
        elif run.gen is not None and ev["t"] != "paused":
            run.gen.close()
        if ev["t"] in ("done", "fail"):
            self.executed += 1
        self._emit(ev)

    # -- reporting --------------------------------------------------------------------------
    def _started(self, tid: str, ts: float) -> None:
        self._events.append({"t": "started", "id": tid, "ts0": ts})
        self._wake.set()

    def _step(self, tid: str, step_index: int, service: float, out: Any) -> None:
        acc = self._acc.get(tid)
        if acc is None:
            acc = self._acc[tid] = [0, 0.0, []]
        acc[0] += 1
        acc[1] += service
        if out is not None:
            acc[2].append((step_index, out))
        self._wake.set()

    def _emit(self, ev: dict[str, Any]) -> None:
        acc = self._acc.pop(ev["id"], None)
        if acc is not None:  # progress first: it happened before this event
            self._events.append(
                {"t": "step", "id": ev["id"], "steps": acc[0], "service": acc[1], "out": acc[2]}
            )
        self._events.append(ev)
        self._wake.set()

    def _drain(self) -> list[dict[str, Any]]:
        evs = self._events
        for tid, acc in self._acc.items():
            evs.append({"t": "step", "id": tid, "steps": acc[0], "service": acc[1], "out": acc[2]})
        self._acc = {}
        self._events = []
        return evs

    async def _flusher(self) -> None:
        backlog: list[dict[str, Any]] = []
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.flush_s)  # gather what else lands in the next moment
            backlog.extend(self._drain())
            if not backlog:
                continue
            try:
                await self._report(self.id, backlog)
                backlog = []
            except Exception:
                await asyncio.sleep(0.2)
                self._wake.set()
