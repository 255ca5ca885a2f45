"""The worker: runs handlers for one pool, steps generators, keeps paused ones (like a KV cache),
and reports to the scheduler in batches. A plain class; ``runtime.factory`` makes it an actor.

Handlers run on long-lived threads (they may block: sleep, a GPU kernel); the actor's event loop
only moves assignments in and reports out. A slot is one task running at a time: an assignment
takes a free slot and a thread, and a thread is started only when no idle one is left, so a
blocking handler never waits for another one to return. Plain handlers known (measured here) to
return at once run several queued tasks back to back in one slot, one thread hop for the lot.
Reports go to the scheduler *by name*, so a restarted scheduler keeps receiving them, and they are
retried until delivered."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

from raysched.handlers import Handler, HandlerRegistry
from raysched.runtime.telemetry import gpu_telemetry
from raysched.store.blobs import is_blob

__all__ = ["Assignment", "WorkerCore"]

log = logging.getLogger("raysched.worker")

Report = Callable[[str, list[dict[str, Any]]], Awaitable[None]]
#: Turns a large payload's descriptor (``raysched.store.blobs``) into the payload: ``(task id,
#: descriptor) -> payload``.
Fetch = Callable[[str, dict[str, Any]], Awaitable[Any]]

#: A plain handler whose mean service time here is below this runs queued tasks back to back...
FAST_S = 0.0005
#: ... as many as fit in this much expected time (so a task waits at most about this long behind
#: others of its batch), at most ``MAX_BATCH``.
BATCH_S = 0.002
MAX_BATCH = 256


@dataclass
class Assignment:
    id: str
    kind: str
    payload: Any
    #: steps already delivered for this task (resume point; outputs up to here are not repeated)
    steps_done: int = 0


class _Run:
    __slots__ = ("a", "gen", "handler", "steps", "stop_kind", "stopped")

    def __init__(self, a: Assignment, handler: Handler) -> None:
        self.a = a
        self.handler = handler
        self.stopped = False  # set from the loop, read by the handler's thread between steps
        self.stop_kind = ""  # "pause" | "cancel"
        self.gen: Generator[Any, Any, Any] | None = None
        self.steps = 0


class _Threads:
    """Long-lived threads fed by one queue. ``submit`` hands a job to an idle thread and starts a
    new one only when none is idle, so every job starts at once and threads are reused."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.started = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self.started += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(
                target=self._loop, name=f"{self.name}-{self.started}", daemon=True
            ).start()

    def _loop(self) -> None:
        get, lock = self._jobs.get, self._lock
        while True:
            job = get()
            try:
                job()
            except BaseException:  # pragma: no cover - jobs catch their own errors
                log.exception("handler thread job failed")
            with lock:
                self._idle += 1


def _fail(tid: str, exc: BaseException) -> dict[str, Any]:
    return {"t": "fail", "id": tid, "etype": type(exc).__name__, "msg": str(exc)}


class WorkerCore:
    def __init__(
        self,
        worker_id: str,
        registry: HandlerRegistry,
        report: Report,
        *,
        slots: int = 1,
        remember_s: float = 10.0,
        max_paused: int = 4,
        flush_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        fetch: Fetch | None = None,
    ) -> None:
        self.id = worker_id
        self._fetch = fetch
        #: assignments whose large payload is being fetched; they join the inbox when it arrives
        self._fetching: dict[str, Assignment] = {}
        self.registry = registry
        self._report = report
        self.slots = slots
        self.max_paused = max_paused
        self.flush_s = flush_s
        self.clock = clock
        self._inbox: deque[Assignment] = deque()  # assigned, waiting for a free slot
        self._free = slots
        self._threads = _Threads(f"raysched-{worker_id[-8:]}")
        self._cost: dict[str, float] = {}  # plain handler -> mean service time here (EMA)
        self._running: dict[str, _Run] = {}
        self._paused: OrderedDict[str, _Run] = OrderedDict()
        self._events: list[dict[str, Any]] = []
        self._acc: dict[str, list[Any]] = {}  # id -> [steps, service_s, outputs]
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[None]] = set()
        self.executed = 0
        #: How long the attempts this worker was given are kept for ``given`` (longer than the
        #: scheduler may take to journal a start: ``store.hold_starts_s`` plus two flushes).
        self.remember_s = remember_s
        # (received at, ids, attempt numbers) per assign call, oldest first
        self._given: deque[tuple[float, list[str], list[int]]] = deque()

    # -- lifecycle --------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
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
            run.stopped = True
        self._closed.set()

    # -- commands from the scheduler ---------------------------------------------------------
    async def assign(self, items: list[tuple[Any, ...]]) -> int:
        return self.assign_now(items)

    def assign_now(self, items: list[tuple[Any, ...]]) -> int:
        """Queue assignments and start what the free slots allow (on the event loop). An item
        is ``(task id, handler, payload, steps done[, attempt number])``."""
        self._ensure_started()
        inbox = self._inbox
        ids: list[str] = []
        attempts: list[int] = []
        for item in items:
            tid, payload = item[0], item[2]
            if len(item) > 4:
                ids.append(tid)
                attempts.append(item[4])
            a = Assignment(tid, item[1], payload, item[3])
            if self._fetch is not None and is_blob(payload):
                self._fetching[tid] = a
                t = asyncio.ensure_future(self._fetch_payload(a, self._fetch))
                self._bg.add(t)
                t.add_done_callback(self._bg.discard)
            else:
                inbox.append(a)
        if ids:
            self._remember(ids, attempts)
        self._pump()
        return len(items)

    def _remember(self, ids: list[str], attempts: list[int]) -> None:
        now = self.clock()
        given = self._given
        given.append((now, ids, attempts))
        cutoff = now - self.remember_s
        while given[0][0] < cutoff:
            given.popleft()

    def given(self) -> dict[str, int]:
        """The attempt numbers of the tasks assigned here in at least the last ``remember_s``
        (the latest per task; older ones are dropped as assignments arrive). A restarted
        scheduler asks before it stops this worker: a start its journal had not got yet then
        still counts as an attempt."""
        out: dict[str, int] = {}
        for _, ids, attempts in self._given:
            out.update(zip(ids, attempts, strict=True))
        return out

    async def _fetch_payload(self, a: Assignment, fetch: Fetch) -> None:
        try:
            payload = await fetch(a.id, a.payload)
        except Exception as exc:
            if self._fetching.get(a.id) is a:  # not stopped, nor assigned again meanwhile
                del self._fetching[a.id]
                log.warning("worker %s: payload of %s unavailable: %s", self.id, a.id, exc)
                ev = {"t": "fail", "id": a.id, "etype": "PayloadUnavailable", "msg": str(exc)}
                self._emit(ev)
            return
        if self._fetching.get(a.id) is not a:
            return  # stopped while it was being fetched (and maybe assigned again)
        del self._fetching[a.id]
        a.payload = payload
        self._inbox.appendleft(a)  # it was assigned before what has arrived since
        self._pump()

    async def stop(self, tid: str, kind: str) -> bool:
        return self.stop_now(tid, kind)

    def stop_now(self, tid: str, kind: str) -> bool:
        """``pause`` (keep the generator for a later resume here) or ``cancel`` a running task
        between steps; ``cancel`` also drops a paused generator. True if the task was here."""
        run = self._running.get(tid)
        if run is not None:
            run.stop_kind = kind
            run.stopped = True
            return True
        # assigned but not started (waiting for its payload, or in the inbox): it leaves
        a = self._fetching.pop(tid, None)
        if a is None:
            a = next((x for x in self._inbox if x.id == tid), None)
            if a is not None:
                self._inbox.remove(a)
        if a is not None:
            h = self.registry.stepwise(a.kind)
            self._emit({"t": "paused" if kind == "pause" and h else "stopped", "id": tid})
            if kind == "pause" and h:  # paused, but no generator is kept here for it
                self._emit({"t": "evicted", "id": tid})
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
            "threads": self._threads.started,
            **gpu_telemetry(),
        }

    # -- execution ------------------------------------------------------------------------------
    def _pump(self) -> None:
        inbox, resolve = self._inbox, self.registry.resolve
        while inbox and self._free > 0:
            a = inbox.popleft()
            try:
                h = resolve(a.kind)
            except Exception as exc:
                self._emit(_fail(a.id, exc))
                continue
            self._free -= 1
            if h.stepwise:
                t = asyncio.ensure_future(self._run_stepwise(a, h))
                self._bg.add(t)
                t.add_done_callback(self._bg.discard)
                continue
            batch = [(a, h)]
            limit = self._batch_limit(h, len(inbox) + 1)
            while inbox and len(batch) < limit:
                nxt = inbox[0]
                try:
                    hn = resolve(nxt.kind)
                except Exception:
                    break  # reported on its own turn
                if hn.stepwise:
                    break
                inbox.popleft()
                batch.append((nxt, hn))
            self._run_plain(batch)

    def _batch_limit(self, h: Handler, queued: int) -> int:
        """How many queued plain tasks one slot takes: a fair share of the free slots; more for a
        handler known to return at once (then one hop for many beats a thread each)."""
        share = -(-queued // (self._free + 1))
        cost = self._cost.get(h.name)
        if cost is not None and cost < FAST_S:
            return max(share, min(MAX_BATCH, int(BATCH_S / max(cost, 1e-6))))
        return share

    def _run_plain(self, batch: list[tuple[Assignment, Handler]]) -> None:
        loop = self._loop
        assert loop is not None
        runs = [_Run(a, h) for a, h in batch]
        running = self._running
        for r in runs:
            running[r.a.id] = r

        def work() -> None:
            evs: list[dict[str, Any]] = []
            try:
                for r in runs:
                    if r.stopped:
                        evs.append({"t": "stopped", "id": r.a.id})
                        continue
                    t0 = time.perf_counter()
                    ts0 = time.time()
                    try:
                        value = r.handler.fn(r.a.payload)
                        ev = {"t": "done", "id": r.a.id, "result": value, "ts0": ts0}
                    except BaseException as exc:
                        ev = _fail(r.a.id, exc)
                        ev["ts0"] = ts0
                    ev["service"] = time.perf_counter() - t0
                    evs.append(ev)
            finally:
                loop.call_soon_threadsafe(self._plain_done, runs, evs)

        self._threads.submit(work)

    def _plain_done(self, runs: list[_Run], evs: list[dict[str, Any]]) -> None:
        total = 0.0
        n = 0
        for r, ev in zip(runs, evs, strict=False):
            if "service" in ev:
                total += ev["service"]
                n += 1
            self._finish(r, ev)
        for r in runs[len(evs) :]:  # pragma: no cover - only if the thread itself failed
            self._finish(r, {"t": "fail", "id": r.a.id, "etype": "WorkerError", "msg": "lost"})
        if n:
            name = runs[0].handler.name
            mean = total / n
            old = self._cost.get(name)
            self._cost[name] = mean if old is None else 0.8 * old + 0.2 * mean
        self._free += 1
        self._pump()

    def _in_thread(self, fn: Callable[[], dict[str, Any]]) -> asyncio.Future[dict[str, Any]]:
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()

        def settle(value: dict[str, Any] | None, exc: BaseException | None) -> None:
            if fut.done():  # pragma: no cover
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                assert value is not None
                fut.set_result(value)

        def job() -> None:
            try:
                value = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, value, None)

        self._threads.submit(job)
        return fut

    async def _run_stepwise(self, a: Assignment, h: Handler) -> None:
        try:
            await self._stepwise(a, h)
        finally:
            self._free += 1
            self._pump()

    async def _stepwise(self, a: Assignment, h: Handler) -> None:
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
                self._emit(_fail(a.id, exc))
                return
        else:
            run.a = a
            run.stopped = False
            run.stop_kind = ""
        self._running[a.id] = run
        gen = run.gen
        assert gen is not None

        def drive() -> dict[str, Any]:
            loop.call_soon_threadsafe(self._started, a.id, time.time())
            while not run.stopped:
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
                    ev = _fail(a.id, exc)
                    ev["service"] = time.perf_counter() - t0
                    return ev
                run.steps += 1
                out = v if run.steps > skip else None
                loop.call_soon_threadsafe(
                    self._step, a.id, run.steps, time.perf_counter() - t0, out
                )
            return {"t": "paused" if run.stop_kind == "pause" else "stopped", "id": a.id}

        try:
            ev = await self._in_thread(drive)
        except BaseException as exc:  # pragma: no cover - drive catches handler errors
            ev = _fail(a.id, exc)
        self._finish(run, ev)

    def _finish(self, run: _Run, ev: dict[str, Any]) -> None:
        tid = run.a.id
        self._running.pop(tid, None)
        evicted = None
        if ev["t"] == "paused":
            self._paused[tid] = run
            if len(self._paused) > self.max_paused:
                # drop the state cheapest to rebuild: the fewest steps taken (the oldest of those;
                # a resume recomputes the prompt and these steps)
                paused = self._paused
                evicted = min(paused, key=lambda k: paused[k].steps)
                old = paused.pop(evicted)
                if old.gen is not None:
                    old.gen.close()
        elif run.gen is not None:
            run.gen.close()
        if ev["t"] in ("done", "fail"):
            self.executed += 1
        self._emit(ev)
        if evicted is not None:  # after the pause: it may be this very task's state
            self._emit({"t": "evicted", "id": evicted})

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
            if self._running:
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
