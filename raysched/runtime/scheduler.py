"""The scheduler service: the policy core plus workers, dispatch, preemption, streaming and pool
scaling. A plain class driven by asyncio; ``runtime.factory`` wraps it as the named, detached
SchedulerActor. Everything runs on the actor's one event loop, so no locks.

The core's view (task states) and the physical view (which task occupies which worker slot) are
kept apart on purpose: a task's slot is freed only when its worker says the task stopped, so a
task cancelled, timed out or preempted is never run by two workers at once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from raysched.errors import (
    RayschedError,
    SchedulerUnavailable,
    TaskNotFound,
    UnknownHandler,
    ValidationFailed,
)
from raysched.handlers import HandlerRegistry, default_registry
from raysched.models import TaskSpec, TaskState
from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PoolSettings, Settings
from raysched.store.blobs import BLOB_KEY, PAYLOAD, BlobStore, is_blob, plain
from raysched.store.blobs import tag as blob_tag
from raysched.store.journal import dumps, loads
from raysched.store.recovery import RecoveredState

__all__ = ["SchedulerService", "WorkerSpawner", "error_dict"]

log = logging.getLogger("raysched.scheduler")
S = TaskState


class WorkerSpawner(Protocol):
    def spawn(self, pool: PoolSettings, worker_id: str) -> Any: ...
    def kill(self, handle: Any) -> None: ...
    def ready(self, handle: Any) -> Awaitable[Any]: ...
    def lease(self, handle: Any) -> Awaitable[Any]: ...
    # assign and stop return None when the command was already handed over (a direct channel)
    def assign(self, handle: Any, items: list[tuple[Any, ...]]) -> Awaitable[Any] | None: ...
    def stop(self, handle: Any, tid: str, kind: str) -> Awaitable[Any] | None: ...
    def telemetry(self, handle: Any) -> Awaitable[Any]: ...


def _rss_mb() -> float | None:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / (1 << 20)
    except Exception:
        return None


def error_dict(exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "code", "internal")
    body: dict[str, Any] = {"code": code, "message": str(exc)}
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        body["retry_after_s"] = retry
    return {"error": body}


@dataclass
class _Worker:
    id: str
    pool: PoolSettings
    handle: Any
    ready: bool = False
    running: set[str] = field(default_factory=set)  # tasks physically occupying a slot
    paused: set[str] = field(default_factory=set)  # tasks whose paused state it keeps
    since_idle: float = 0.0
    telemetry: dict[str, Any] = field(default_factory=dict)
    kill_at: float | None = None  # a stop it was asked for is overdue then

    def free(self, reserved: int) -> int:
        return self.pool.slots - len(self.running) - reserved


class SchedulerService:
    def __init__(
        self,
        settings: Settings,
        spawner: WorkerSpawner,
        *,
        clock: Callable[[], float] = time.time,
        store: RecoveredState | None = None,
        objects: Callable[[Any], Any] | None = None,
    ) -> None:
        self.settings = settings
        #: Puts a value into the object store and returns its reference (``ray.put`` at the
        #: edge); None keeps large values in this process (tests without Ray).
        self.objects = objects
        self.spawner = spawner
        self.clock = clock
        #: Durable state (journal, checkpoints, results); None keeps everything in memory.
        self.store = store
        self.recorder = store.recorder if store is not None else None
        if store is not None:
            self.core = store.core
            store.recorder.hold_starts_s = settings.store.hold_starts_s
            store.recorder.clock = clock  # the clock of the core's ``now`` (``started_at``)
        else:
            self.core = SchedulerCore(
                settings.policy, pools=[p.name for p in settings.pools], on_refused=log.warning
            )
        self.registry: HandlerRegistry = default_registry(settings.handlers)
        self.pools = {p.name: p for p in settings.pools}
        self.workers: dict[str, _Worker] = {}
        self.streams: dict[str, list[tuple[int, Any]]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._reserved: dict[str, tuple[Task, str]] = {}  # victim id -> (incoming, worker id)
        self._stopping: dict[str, str] = {}  # task id -> "pause" | "cancel"
        self._zombies: set[str] = set()  # old attempts not yet confirmed stopped
        self._homed: set[str] = set()  # tasks whose paused state sits on a worker (t.home)
        self._backlog_since: dict[str, float] = {}  # pool -> since when work has waited
        self._waits: dict[str, deque[float]] = {}  # recent first-start waits per tier
        self._started = False
        self._loop_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self.started_at = clock()
        self.dispatched = 0
        self._gpu_requests = sum(1 for t in self.core.tasks.values() if t.gpu_memory_mb is not None)
        # store housekeeping: next checkpoint / results conversion, journal size at the last
        # checkpoint
        self._next_checkpoint = self.started_at + settings.store.checkpoint_interval_s
        # set when an outcome is journaled after the last seal: a burst after a quiet spell ends
        # in the segment its tasks were submitted in (short outcome rows, see Recorder)
        self._next_results: float | None = None
        self._converting = False
        self._sealed_ended = 0  # final outcomes journaled when it was last sealed for results
        self._checkpoint_bytes = 0
        self._checkpointing = False
        self.checkpoints_taken = 0
        self.checkpoint_tasks = 0  # tasks in the newest checkpoint
        self._store_error: str | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        # Large payloads and results (raysched.store.blobs): durable files plus object refs,
        # readable whenever there is a store (inline_max_bytes: null only stops new ones).
        # Payload blobs follow store.sync: fsynced before the acknowledgement under "always",
        # with the journal's fsync under "everysec", by the kernel under "off".
        self.blobs = (
            BlobStore(
                store.results.dir,
                settings.store.inline_max_bytes,
                sync=settings.store.sync,
            )
            if store is not None
            else None
        )
        if self.blobs is not None and store is not None and settings.store.sync == "everysec":
            store.journal.sync_hooks.append(self.blobs.sync_pending)
        #: payload blobs of final tasks, deleted once a checkpoint has made their outcome durable
        self._blob_garbage: list[dict[str, Any]] = []
        self._payload_refs: dict[str, Any] = {}
        self._result_refs: OrderedDict[str, Any] = OrderedDict()
        self.blob_counts = {"payloads": 0, "payload_refs": 0, "results_read": 0, "swept": 0}
        # blobs on disk: orphans are swept after checkpoints, at most once per SWEEP_MIN_AGE_S
        self._blobs_used = self.blobs is not None and self.blobs.exists()
        self._next_sweep = 0.0
        if self._blobs_used:  # payloads of tasks that were final before the restart
            for t in self.core.tasks.values():
                if is_blob(t.payload) and self.core.is_final(t):
                    self._blob_garbage.append(t.payload)
                    t.payload = None

    # -- start-up -------------------------------------------------------------------------------
    def boot(self) -> None:
        """Spawn the workers and start the loop, once (needs the running event loop)."""
        if not self._started:
            self._started = True
            self._wake = asyncio.Event()
            for pool in self.pools.values():
                for _ in range(pool.min_workers):
                    self._spawn(pool)
            self._loop_task = asyncio.create_task(self._run())

    async def start(self) -> dict[str, Any]:
        self.boot()
        out: dict[str, Any] = {"ready": True, "workers": len(self.workers)}
        if self.store is not None:
            rep = self.store.report
            # recovery runs before the service exists, so by now the state is loaded
            out["recovered"] = True
            out["recovery"] = {
                "seconds": round(rep.seconds, 3),
                "live": rep.live,
                "finished": rep.finished,
                "requeued": rep.requeued,
                "started_by_workers": rep.started_by_workers,
                "snapshot": rep.snapshot,
                "journal_records": rep.journal_records,
                "damaged": list(rep.damaged),
            }
        return out

    def _bg_task(self, coro: Awaitable[Any]) -> None:
        t: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    def _spawn(self, pool: PoolSettings) -> _Worker:
        wid = f"raysched-w-{pool.name}-{uuid.uuid4().hex[:8]}"
        w = _Worker(wid, pool, self.spawner.spawn(pool, wid), since_idle=self.clock())
        self.workers[wid] = w
        self._bg_task(self._watch(w))
        return w

    async def _watch(self, w: _Worker) -> None:
        try:
            info = await self.spawner.ready(w.handle)
            w.ready = True
            w.telemetry = dict(info.get("telemetry", {})) if isinstance(info, dict) else {}
            self._kick()
            await self._until_gone(w)
        except Exception as exc:
            log.warning("worker %s lost: %s", w.id, exc)
        self._worker_gone(w, "worker died")

    async def _until_gone(self, w: _Worker) -> None:
        """Returns (or raises) when the worker is gone. Ray reports an actor's death through its
        lease call, but only once it has noticed the node died (which can take long); a dropped
        direct channel is noticed at once, so then the worker is asked whether it is still
        there, and one that does not answer within ``stop_grace_s`` is replaced."""
        lease = asyncio.ensure_future(self.spawner.lease(w.handle))
        channel_lost = getattr(self.spawner, "channel_lost", None)
        if channel_lost is None:
            await lease
            return
        lost = asyncio.ensure_future(channel_lost(w.handle))
        try:
            done, _ = await asyncio.wait({lease, lost}, return_when=asyncio.FIRST_COMPLETED)
            if lease in done:
                lease.result()
                return
            try:
                await asyncio.wait_for(self.spawner.telemetry(w.handle), self.settings.stop_grace_s)
            except Exception as exc:
                log.warning("worker %s: channel lost and no answer (%s); replacing it", w.id, exc)
                self.spawner.kill(w.handle)
                return
            await lease  # alive: it stays on Ray calls
        finally:
            for f in (lease, lost):
                if not f.done():
                    f.cancel()

    def _worker_gone(self, w: _Worker, reason: str) -> None:
        if self.workers.pop(w.id, None) is None:
            return
        now = self.clock()
        for tid in list(w.running):
            self._zombies.discard(tid)
            t = self.core.tasks.get(tid)
            if t is not None and t.state is S.RUNNING and t.worker == w.id:
                self._stopping.pop(tid, None)
                self._release_reservation(tid, now)
                self._notify(t)
                self._notify_all(self.core.lost(t, now, reason))
        for tid in list(self._homed):
            t = self.core.tasks.get(tid)
            if t is None:
                self._homed.discard(tid)
            elif t.home == w.id:
                self._set_home(t, None)  # its paused state died with the worker
        for victim, (incoming, wid) in list(self._reserved.items()):
            if wid == w.id:
                del self._reserved[victim]
                self.core.unreserve(incoming, now)
        self._kick()

    # -- the loop -------------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        next_scale = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.tick_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                now = self.clock()
                for t in self.core.tick(now):
                    self._timeout(t, now)
                self._check_kills(now)
                if now >= next_scale:
                    next_scale = now + 0.2
                    self._scale(now)
                self._dispatch(now)
                if self.store is not None:
                    self._persist(now)
            except Exception:  # pragma: no cover - keep the loop alive, say why
                log.exception("scheduler loop error")

    # -- durability -----------------------------------------------------------------------------
    def _persist(self, now: float) -> None:
        """Journal what changed (without waiting), and run the periodic store chores."""
        store = self.store
        assert store is not None and self.recorder is not None
        self._flush_soon()
        if self._checkpointing:
            return
        cfg = self.settings.store
        grown = store.journal.stats.bytes - self._checkpoint_bytes
        if grown > 0 and (
            now >= self._next_checkpoint or grown >= cfg.checkpoint_journal_mb * (1 << 20)
        ):
            self._checkpointing = True
            # measured at the start: what is written while the snapshot is taken needs the next
            self._checkpoint_bytes = store.journal.stats.bytes
            self._bg_task(self._checkpoint())
        elif self.recorder.ended > self._sealed_ended:
            # outcomes reach the results files about results_flush_s after the first one
            # journaled since the last seal
            if self._next_results is None:
                self._next_results = now + cfg.results_flush_s
            if now < self._next_results or self._converting:
                return
            self._next_results = None
            self._sealed_ended = self.recorder.ended
            try:
                upto = store.seal()  # drains the recorder first
            except Exception as exc:  # the journal failed: acknowledgements now fail too
                if self._store_error is None:
                    log.error("journal write failed: %s", exc)
                self._store_error = str(exc)
                return
            self._converting = True
            self._bg_task(self._convert_results(upto))

    def _flush_soon(self) -> None:
        """Journal the changes that need no acknowledgement (starts, progress, outcomes) within
        ``store.flush_interval_s``: a task that starts and ends in that window costs one record,
        and many worker reports share one write. Acknowledgements still wait (``_commit``)."""
        if self.recorder is None or self._flush_handle is not None:
            return
        self._flush_handle = asyncio.get_running_loop().call_later(
            self.settings.store.flush_interval_s, self._flush
        )

    def _flush(self) -> None:
        self._flush_handle = None
        if self.recorder is None:
            return
        try:
            self.recorder.flush()
        except Exception as exc:  # the journal failed: acknowledgements now fail (see _commit)
            if self._store_error is None:
                log.error("journal write failed: %s", exc)
            self._store_error = str(exc)

    async def _commit(self, new_only: bool = False) -> dict[str, Any] | None:
        """Wait until the journal holds every change so far (``new_only``: every new task, which
        is what acknowledging a submission needs): call before acknowledging. Returns an error
        body when it cannot (the caller answers with it instead of an acknowledgement)."""
        if self.recorder is None:
            return None
        try:
            await self.recorder.commit(new_only)
        except Exception as exc:
            if self._store_error is None:  # once: reads that commit would repeat it per call
                log.error("journal write failed: %s", exc)
            self._store_error = str(exc)
            return error_dict(SchedulerUnavailable(f"the journal cannot be written: {exc}"))
        return None

    async def _checkpoint(self) -> None:
        store = self.store
        assert store is not None
        # payload blobs of tasks that were final before this checkpoint: it makes them durable
        garbage, self._blob_garbage = self._blob_garbage, []
        try:
            info = await store.checkpoint_async()
            self.checkpoints_taken += 1
            self.checkpoint_tasks = info.tasks
            log.info("checkpoint %s: %d tasks", info.name, info.tasks)
            self._delete_blobs(garbage)
            if self._blobs_used and self.clock() >= self._next_sweep:
                self._next_sweep = self.clock() + self.SWEEP_MIN_AGE_S
                self._bg_task(self._sweep())
        except Exception:
            self._blob_garbage[:0] = garbage
            log.exception("checkpoint failed (the journal still has everything)")
        finally:
            self._checkpointing = False
            self._next_checkpoint = self.clock() + self.settings.store.checkpoint_interval_s

    async def _convert_results(self, upto: int) -> None:
        """Outcomes in the journal segments below ``upto`` go to the results files (off this
        process where a converter is set up, see ``RecoveredState.convert``)."""
        assert self.store is not None
        try:
            await asyncio.to_thread(self.store.convert_results, upto)
        except Exception as exc:  # the journal keeps them; the next round retries
            log.warning("results conversion failed: %s", exc)
            self._sealed_ended = -1  # retry even if nothing new ends meanwhile
        finally:
            self._converting = False

    def _timeout(self, t: Task, now: float) -> None:
        msg = f"timed out after {t.timeout_s}s"
        if t.state is S.RUNNING and t.worker in self.workers:
            self._stop_on(t.worker, t.id, "cancel", now)
            self._zombies.add(t.id)
        self._release_reservation(t.id, now)
        self._drop_paused(t)
        changed = self.core.finish(
            t, now, ok=False, error_type="TimeoutError", error=msg, timed_out=True
        )
        self._notify(t)
        self._notify_all(changed)

    def _check_kills(self, now: float) -> None:
        for w in list(self.workers.values()):
            if w.kill_at is not None and now >= w.kill_at:
                if any(tid in self._zombies for tid in w.running):
                    log.warning("worker %s did not stop a task in time; replacing it", w.id)
                    self.spawner.kill(w.handle)
                    self._worker_gone(w, "worker replaced after a stuck task")
                else:
                    w.kill_at = None

    def _scale(self, now: float) -> None:
        for pool in self.pools.values():
            mine = [w for w in self.workers.values() if w.pool.name == pool.name]
            starting = any(not w.ready for w in mine)
            n = len(mine)
            while n < pool.min_workers:
                self._spawn(pool)
                n += 1
                starting = True
            q = self.core.queues[pool.name]
            head = q.peek()
            # Grow on a backlog that has lasted scale_up_wait_s: time-sharing (MLFQ quanta) keeps
            # re-enqueueing tasks, so the head's own wait would understate the pressure.
            demand = (
                len(q)
                + sum(1 for inc, _ in self._reserved.values() if inc.pool == pool.name)
                + sum(len(w.running) for w in mine)
            )
            if demand > sum(w.pool.slots for w in mine):
                since = self._backlog_since.setdefault(pool.name, now)
            else:
                self._backlog_since.pop(pool.name, None)
                since = None
            if (
                since is not None
                and not starting
                and n < pool.max_workers
                and now - since >= pool.scale_up_wait_s
            ):
                self._spawn(pool)
                self._backlog_since[pool.name] = now
                continue
            if n > pool.min_workers and head is None:
                for w in mine:
                    if n <= pool.min_workers:
                        break
                    if w.running:
                        w.since_idle = now
                        continue
                    if any(t.home == w.id for t in self.core.queues[pool.name]):
                        continue
                    if now - w.since_idle >= pool.idle_timeout_s:
                        for tid in list(w.paused):  # homed here but out of the queue (reserved)
                            t = self.core.tasks.get(tid)
                            if t is not None and t.home == w.id:
                                self._set_home(t, None)
                        self.workers.pop(w.id, None)
                        self.spawner.kill(w.handle)
                        n -= 1

    # -- dispatch and preemption ----------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        for pool in self.pools.values():
            q = self.core.queues[pool.name]
            if not len(q):
                continue
            reserved_on: dict[str, int] = {}
            for _, wid in self._reserved.values():
                reserved_on[wid] = reserved_on.get(wid, 0) + 1
            accept = self._accept_for(pool)
            # No paused state pinned to a worker and no placement check: every queued task may go
            # to any worker, so the queue's batch pop serves it (same order, no per-task checks).
            anywhere = accept is None and not self._homed
            full = True
            for w in sorted(self.workers.values(), key=lambda w: len(w.running)):
                if w.pool.name != pool.name or not w.ready or w.kill_at is not None:
                    continue
                free = w.free(reserved_on.get(w.id, 0))
                if free <= 0:
                    continue
                full = False
                if not len(q):
                    break
                if anywhere:
                    got = self.core.dispatch(pool.name, free, now)
                    for t in got:
                        t.worker = w.id
                else:
                    got = self.core.dispatch(
                        pool.name, free, now, w.id, accept(w) if accept else None
                    )
                if got:
                    self._send(w, got, now)
            if full and len(q):
                self._preempt(pool, now)

    def _accept_for(self, pool: PoolSettings) -> Callable[[_Worker], Callable[[Task], bool]] | None:
        zombies = self._zombies
        if not zombies and not self._gpu_requests:
            return None

        def for_worker(w: _Worker) -> Callable[[Task], bool]:
            cap = self._gpu_free_mb(w)

            def ok(t: Task) -> bool:
                if t.id in zombies:
                    return False
                return t.gpu_memory_mb is None or (cap is not None and t.gpu_memory_mb <= cap)

            return ok

        return for_worker

    def _gpu_free_mb(self, w: _Worker) -> int | None:
        gpus = w.telemetry.get("gpus")
        if gpus:
            return min(int(g["mem_free_mb"]) for g in gpus)
        return w.pool.gpu_memory_mb

    def _send(self, w: _Worker, tasks: list[Task], now: float) -> None:
        items = []
        for t in tasks:
            w.running.add(t.id)
            if t.first_start == now and t.attempts == 1 and not t.steps:
                self._waits.setdefault(t.tier, deque(maxlen=10_000)).append(now - t.arrival)
            if t.home is not None:
                if t.home != w.id:
                    self._drop_paused(t)
                self._set_home(t, None)
            items.append((t.id, t.kind, t.payload, t.steps, t.attempts))
            self._notify(t)
        self.dispatched += len(items)
        self._fire(w, self.spawner.assign(w.handle, items))

    def _fire(self, w: _Worker, aw: Awaitable[Any] | None) -> None:
        if aw is not None:
            self._bg_task(self._call(w, aw))

    def _set_home(self, t: Task, wid: str | None) -> None:
        old = self.workers.get(t.home) if t.home is not None else None
        if old is not None:
            old.paused.discard(t.id)
        t.home = wid
        if wid is None:
            self._homed.discard(t.id)
        else:
            self._homed.add(t.id)
            w = self.workers.get(wid)
            if w is not None:
                w.paused.add(t.id)

    def _pinned(self, pool: PoolSettings) -> set[str]:
        """Running tasks whose pause would evict a paused state from their worker (the worker
        keeps ``max_paused``): see ``SchedulerCore.plan_preemption``."""
        if not self.core.cost.recompute:
            return set()
        return {
            tid
            for w in self.workers.values()
            if w.pool.name == pool.name and len(w.paused) >= pool.max_paused
            for tid in w.running
        }

    async def _call(self, w: _Worker, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception as exc:
            log.info("call to %s failed: %s", w.id, exc)

    def _preempt(self, pool: PoolSettings, now: float) -> None:
        exclude = set(self._reserved) | set(self._stopping)
        pinned = self._pinned(pool)
        while True:
            plan = self.core.plan_preemption(pool.name, now, exclude, pinned=pinned)
            if plan is None:
                return
            incoming, victim = plan
            wid = victim.worker
            assert wid is not None
            self._reserved[victim.id] = (incoming, wid)
            exclude.add(victim.id)
            self._stop_on(wid, victim.id, "pause", now)

    def _stop_on(self, wid: str, tid: str, kind: str, now: float) -> None:
        w = self.workers.get(wid)
        if w is None:
            return
        self._stopping[tid] = kind
        if kind == "cancel":
            w.kill_at = now + self.settings.stop_grace_s
        self._fire(w, self.spawner.stop(w.handle, tid, kind))

    def _drop_paused(self, t: Task) -> None:
        if t.home is not None and t.home in self.workers:
            w = self.workers[t.home]
            self._fire(w, self.spawner.stop(w.handle, t.id, "cancel"))
        self._set_home(t, None)

    def _release_reservation(self, victim_id: str, now: float) -> None:
        r = self._reserved.pop(victim_id, None)
        if r is not None:
            self.core.unreserve(r[0], now)

    # -- reports from workers -------------------------------------------------------------------
    async def report(
        self, wid: str, events: list[dict[str, Any]], done: bytes | None = None
    ) -> int:
        """A worker's events, in order; ``done``: its successful outcomes encoded for the
        journal (``records.split_done``), after the other events."""
        w = self.workers.get(wid)
        now = self.clock()
        if w is None:
            return 0  # a worker we no longer know (replaced); its events are stale
        for ev in events:
            try:
                self._on_event(w, ev, now)
            except RayschedError as exc:  # pragma: no cover - refused transitions are logged
                log.warning("event %s from %s: %s", ev.get("t"), wid, exc)
        n = len(events)
        if done is not None:
            n += self._on_done(w, done, now)
        self._dispatch(now)
        self._flush_soon()
        return n

    def _on_done(self, w: _Worker, data: bytes, now: float) -> int:
        """Encoded ``done`` events: taken as any event; the recorder journals those that ended a
        first attempt with no steps as the worker encoded them (``Recorder.outcomes``)."""
        try:
            evs = loads(data)
        except ValueError:  # pragma: no cover - a worker of another version
            log.warning("undecodable outcomes from %s: dropped (the tasks run again)", w.id)
            return 0
        on_event = self._on_event
        taken: list[Task | None] = []
        for ev in evs:
            try:
                taken.append(on_event(w, ev, now))
            except RayschedError as exc:  # pragma: no cover - refused transitions are logged
                log.warning("event %s from %s: %s", ev.get("t"), w.id, exc)
                taken.append(None)
        if self.recorder is not None:
            self.recorder.outcomes(w.id, now, data, evs, taken)
        return len(evs)

    def _on_event(self, w: _Worker, ev: dict[str, Any], now: float) -> Task | None:
        """Apply one event; returns the task when it is a success taken as its outcome."""
        tid = ev["id"]
        kind = ev["t"]
        t = self.core.tasks.get(tid)
        current = (
            t is not None and t.state is S.RUNNING and t.worker == w.id and tid not in self._zombies
        )
        if current and t is not None and "ts0" in ev and t.attempts == 1 and not t.steps:
            # the worker's own start time: started_at is when the handler began, not dispatch
            t.first_start = max(t.arrival, float(ev["ts0"]))
        if kind == "started":
            return None
        if kind == "step":
            if not current or t is None:
                return None
            self._append_outputs(t, ev["out"])
            d = self.core.progress(
                t,
                ev["service"],
                ev["steps"],
                now,
                requeue=False,
                pinned=self.core.cost.recompute and len(w.paused) >= w.pool.max_paused,
            )
            if self.recorder is not None:
                self.recorder.touch(t)  # steps and service: a resume restarts from here
            if d is Decision.YIELD and tid not in self._stopping:
                self._stop_on(w.id, tid, "pause", now)
            return None
        if kind == "evicted":
            if t is not None and t.home == w.id:
                self._set_home(t, None)
            return None
        # the task left its slot
        w.running.discard(tid)
        if not w.running:
            w.since_idle = now
        was_zombie = tid in self._zombies
        self._zombies.discard(tid)
        stop_kind = self._stopping.pop(tid, None)
        if w.kill_at is not None and not any(x in self._zombies for x in w.running):
            w.kill_at = None
        if t is None or not current:
            if kind == "paused" and t is not None:
                self._fire(w, self.spawner.stop(w.handle, tid, "cancel"))
            if was_zombie or t is None or t.state is not S.RUNNING:
                self._release_reservation(tid, now)
            return None
        if kind == "paused":
            self.core.preempt(t, now, "preempted" if stop_kind == "pause" else "paused")
            self._set_home(t, w.id)
            r = self._reserved.pop(tid, None)
            if r is not None:
                incoming = r[0]
                if incoming.state in (S.QUEUED, S.PREEMPTED) and incoming.qkey is None:
                    self.core.start(incoming, now, w.id)
                    self._send(w, [incoming], now)
            self._notify(t)
            return None
        self._release_reservation(tid, now)
        self.core.account(t, float(ev.get("service", 0.0)), 0)
        taken = None
        if kind == "done":
            result = ev.get("result")
            if is_blob(result):
                self._blobs_used = True
            changed = self.core.finish(t, now, ok=True, result=result)
            taken = t
        elif kind == "fail":
            changed = self.core.finish(
                t, now, ok=False, error_type=ev.get("etype"), error=ev.get("msg")
            )
        else:  # "stopped" without our asking: the worker is shutting down
            changed = self.core.lost(t, now, "stopped by its worker")
        self._notify(t)
        self._notify_all(changed)
        return taken

    def _append_outputs(self, t: Task, outs: list[tuple[int, Any]]) -> None:
        if not outs:
            return
        buf = self.streams.setdefault(t.id, [])
        last = buf[-1][0] if buf else 0
        for idx, val in outs:
            if idx > last and len(buf) < self.settings.max_stream_items:
                buf.append((idx, val))
                last = idx
        self._notify(t)

    def _notify_all(self, tasks: list[Task]) -> None:
        for t in tasks:
            self._notify(t)

    def _notify(self, t: Task) -> None:
        ev = self._changed.pop(t.id, None)
        if ev is not None:
            ev.set()
        if self._blobs_used and is_blob(t.payload) and self.core.is_final(t):
            self._drop_payloads([t])

    # -- client API -----------------------------------------------------------------------------
    async def submit(
        self, specs: list[dict[str, Any]], tenant: str | None = None
    ) -> dict[str, Any]:
        """Accept a batch all or nothing. Returns {"ids", "states"} or {"error": {...}}."""
        now = self.clock()
        big: list[Task] = []
        try:
            tasks = [self._task_from(d, now, tenant, big) for d in specs]
        except RayschedError as exc:
            return error_dict(exc)
        refs: list[Any] = []
        if big:
            try:
                refs = await self._offload_payloads(big)
            except Exception as exc:
                log.error("payload blobs cannot be written: %s", exc)
                return error_dict(SchedulerUnavailable(f"payload blobs cannot be written: {exc}"))
        try:
            accepted = self.core.submit_many(tasks, now)
        except RayschedError as exc:
            self._drop_payloads(big)
            return error_dict(exc)
        if big:  # a duplicate (same id or idempotency key) keeps the first task's payload
            kept = {id(t) for t in accepted}
            for t, ref in zip(big, refs, strict=False):
                if id(t) in kept and not self.core.is_final(t):
                    self._payload_refs[t.id] = ref
            # refused copies, and children failed at once because a parent had failed
            self._drop_payloads([t for t in big if id(t) not in kept or self.core.is_final(t)])
        # Dispatch first (latency): the journal record then carries the current state anyway,
        # and nothing is acknowledged before the journal has it.
        self._dispatch(now)
        # only the new tasks hold up the acknowledgement; the starts just made (and what
        # workers reported meanwhile) go with the next flush, where a short task's start and
        # end make one row
        self._flush_soon()
        err = await self._commit(new_only=True)
        if err is not None:
            return err
        return {"ids": [t.id for t in accepted], "states": [t.state.value for t in accepted]}

    def _task_from(
        self, d: dict[str, Any], now: float, tenant: str | None, big: list[Task] | None = None
    ) -> Task:
        tiers = self.settings.policy.tiers
        if tenant is not None:
            d = {**d, "tenant": tenant}
        ctx: dict[str, Any] = {"tiers": tiers}
        try:
            spec = TaskSpec.model_validate(d, context=ctx)
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(x) for x in e["loc"]) or "task"
            raise ValidationFailed(f"{loc}: {e['msg']}") from None
        if not self.registry.is_registered(spec.kind) and ":" not in spec.kind:
            raise UnknownHandler(
                f"unknown handler {spec.kind!r}; registered: {', '.join(self.registry.names())}"
            )
        pool = self._route(spec.kind)
        tier, prio = spec.resolved_priority(tiers)
        prompt = spec.prompt_tokens
        if prompt is None and isinstance(spec.payload.get("prompt_tokens"), int):
            prompt = int(spec.payload["prompt_tokens"])
        t = Task(
            spec.id,
            prio,
            now,
            0,
            prompt or 0,
            spec.tenant,
            tier,
            spec.kind,
            pool,
            spec.size_hint,
            None if spec.deadline_s is None else now + spec.deadline_s,
        )
        t.payload = spec.payload
        if (
            big is not None
            and self.blobs is not None
            and self.blobs.max_inline is not None
            and ctx.get("payload_bytes", 0) > self.blobs.max_inline
        ):
            big.append(t)
        if spec.depends_on:
            t.depends_on = spec.depends_on
        if spec.timeout_s is not None:
            t.timeout_s = spec.timeout_s
        if spec.max_retries:
            t.max_retries = spec.max_retries
        if spec.idempotency_key is not None:
            t.idempotency_key = spec.idempotency_key
        if spec.resources.gpu_memory_mb is not None:
            t.gpu_memory_mb = spec.resources.gpu_memory_mb
        t.preemptible = bool(self.registry.stepwise(spec.kind))
        if t.gpu_memory_mb is not None:
            self._gpu_requests += 1  # from now on dispatch checks placement (the slower path)
        return t

    async def _offload_payloads(self, tasks: list[Task]) -> list[Any]:
        """Large payloads: a durable blob file each (before the acknowledgement, like the
        journal), the value into the object store; the task and its records keep a descriptor.
        Returns the object refs (none without an object store)."""
        blobs = self.blobs
        assert blobs is not None

        def write() -> list[dict[str, Any]]:
            return blobs.write_many([(dumps(t.payload), t.id) for t in tasks])

        descs = await asyncio.to_thread(write)
        self.blob_counts["payloads"] += len(descs)
        self._blobs_used = True
        refs = []
        for t, desc in zip(tasks, descs, strict=True):
            if self.objects is not None:
                refs.append(self.objects(t.payload))
            t.payload = desc
        return refs

    def _drop_payloads(self, tasks: list[Task]) -> None:
        """Blob files and references of tasks that were not accepted (deleted now), or are final
        (deleted after the next checkpoint: until their outcome is durable, a crash could bring
        them back as work to redo)."""
        now_: list[dict[str, Any]] = []
        for t in tasks:
            ours = self.core.tasks.get(t.id) is t
            if ours:
                self._payload_refs.pop(t.id, None)
            if is_blob(t.payload):
                (self._blob_garbage if ours else now_).append(t.payload)
                t.payload = None  # final or refused: nothing reads it again
        if now_:
            self._delete_blobs(now_)

    #: Blob files younger than this are never swept (a submission or a report may be writing them).
    SWEEP_MIN_AGE_S = 3600.0

    def _orphans(self, candidates: list[tuple[str, str, str]]) -> list[str]:
        """Which of the old blob files (name, kind, tag) nothing needs, decided on the loop: a
        payload file that is not the payload of the task it names (never acknowledged, or final
        and already durable) and not waiting in the garbage list; a result file of a final task
        whose recorded result is another file (a stale attempt's). Result files of tasks not held
        here are kept, and none are swept with ``restore_finished: false`` (the results files
        may name them)."""
        tasks, is_final = self.core.tasks, self.core.is_final
        by_tag: dict[str, Task] | None = None
        pending = {d[BLOB_KEY] for d in self._blob_garbage}
        keep_results = not self.settings.store.restore_finished
        out = []
        for name, kind, tg in candidates:
            if tg.startswith("="):  # a hashed id: map tags back, once per sweep
                if by_tag is None:
                    by_tag = {blob_tag(i): t for i, t in tasks.items() if not plain(i)}
                t = by_tag.get(tg)
            else:
                t = tasks.get(tg)
            if kind == PAYLOAD:
                used = t is not None and is_blob(t.payload) and t.payload[BLOB_KEY] == name
                if not used and name not in pending:
                    out.append(name)
            elif not keep_results and t is not None and is_final(t):
                r = t.result
                if not (is_blob(r) and r[BLOB_KEY] == name):
                    out.append(name)
        return out

    async def _sweep(self) -> None:
        blobs = self.blobs
        assert blobs is not None
        try:
            old = await asyncio.to_thread(blobs.old_files, self.SWEEP_MIN_AGE_S, self.clock())
            n = await asyncio.to_thread(blobs.delete_names, self._orphans(old))
        except Exception as exc:
            log.warning("blob sweep failed: %s", exc)
            return
        if n:
            log.info("blob sweep: %d orphaned files deleted", n)
        self.blob_counts["swept"] += n

    def _delete_blobs(self, descs: list[dict[str, Any]]) -> None:
        if self.blobs is not None and descs:
            self._bg_task(asyncio.to_thread(self._delete_quietly, descs))

    def _delete_quietly(self, descs: list[dict[str, Any]]) -> None:
        assert self.blobs is not None
        for d in descs:
            try:
                self.blobs.delete(d)
            except Exception as exc:  # a bad name or a storage error: keep going
                log.warning("blob %s not deleted: %s", d, exc)

    def payload_ref(self, tid: str) -> dict[str, Any]:
        ref = self._payload_refs.get(tid)
        if ref is None:
            return {}
        self.blob_counts["payload_refs"] += 1
        return {"ref": ref}

    def _route(self, kind: str) -> str:
        for p in self.pools.values():
            if kind in p.handlers:
                return p.name
        for p in self.pools.values():
            if "*" in p.handlers:
                return p.name
        raise UnknownHandler(f"no pool runs handler {kind!r}")

    def status(self, tid: str) -> dict[str, Any]:
        t = self.core.tasks.get(tid)
        if t is None:
            return error_dict(TaskNotFound(f"no task {tid}"))
        return self.core.info(t).model_dump(mode="json")

    def tenant_of(self, tid: str) -> str | None:
        t = self.core.tasks.get(tid)
        return None if t is None else t.tenant

    async def _until_final(self, t: Task, timeout: float | None) -> bool:
        """Waits up to ``timeout`` for ``t`` to be final; returns whether it is."""
        deadline = None if timeout is None else self.clock() + timeout
        while not self.core.is_final(t):
            left = None if deadline is None else deadline - self.clock()
            if left is not None and left <= 0:
                return False
            ev = self._changed.setdefault(t.id, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass
        return True

    async def result(self, tid: str, timeout: float | None = None) -> dict[str, Any]:
        """Waits up to ``timeout`` for the task's final outcome."""
        t = self.core.tasks.get(tid)
        if t is None:
            return error_dict(TaskNotFound(f"no task {tid}"))
        if not await self._until_final(t, timeout):
            return {"state": t.state.value, "done": False}
        # an outcome reaches the journal within store.flush_interval_s; answer only once it has
        # (a crash of this process in between would run the task again and could record a
        # different result)
        err = await self._commit()
        if err is not None:
            return err
        out: dict[str, Any] = {"state": t.state.value, "done": True}
        if t.state is S.SUCCEEDED:
            if is_blob(t.result):
                try:
                    out.update(await self._large_result(t))
                except Exception as exc:
                    log.error("result blob of %s cannot be read: %s", tid, exc)
                    return error_dict(
                        SchedulerUnavailable(f"the result of {tid} cannot be read: {exc}")
                    )
            else:
                out["result"] = t.result
        else:
            out["error_type"] = t.error_type
            out["error"] = t.error
        return out

    #: Object refs of large results kept for fast reads (older ones are read from their blob).
    RESULT_REFS = 1024

    def _keep_result_ref(self, tid: str, ref: Any) -> None:
        refs = self._result_refs
        refs[tid] = ref
        refs.move_to_end(tid)
        while len(refs) > self.RESULT_REFS:
            refs.popitem(last=False)

    async def _large_result(self, t: Task) -> dict[str, Any]:
        """A large result: ``{"result_ref": ObjectRef}`` to its JSON bytes in the object store
        (the caller decodes them; this process never does), read from its blob file the first
        time; ``{"result": value}`` without an object store."""
        ref = self._result_refs.get(t.id)
        if ref is None:
            if self.blobs is None:
                raise FileNotFoundError("no state directory for result blobs")
            data = await asyncio.to_thread(self.blobs.read_bytes, t.result)
            self.blob_counts["results_read"] += 1
            if self.objects is None:
                return {"result": loads(data)}
            ref = self.objects(data)
            self._keep_result_ref(t.id, ref)
        else:
            self._result_refs.move_to_end(t.id)
        return {"result_ref": ref}

    async def stream(self, tid: str, after: int = 0, wait_s: float = 10.0) -> dict[str, Any]:
        """Step outputs with index > ``after``; waits up to ``wait_s`` for new ones (long poll)."""
        t = self.core.tasks.get(tid)
        if t is None:
            return error_dict(TaskNotFound(f"no task {tid}"))
        deadline = self.clock() + wait_s
        while True:
            buf = self.streams.get(tid, [])
            items = [(i, v) for i, v in buf if i > after] if buf and buf[-1][0] > after else []
            final = self.core.is_final(t)
            if items or final or self.clock() >= deadline:
                return {"items": items, "state": t.state.value, "done": final}
            ev = self._changed.setdefault(tid, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), timeout=max(0.0, deadline - self.clock()))
            except asyncio.TimeoutError:
                pass

    async def cancel(self, tid: str) -> dict[str, Any]:
        now = self.clock()
        t = self.core.tasks.get(tid)
        if t is None:
            return error_dict(TaskNotFound(f"no task {tid}"))
        was_running = t.state is S.RUNNING
        wid = t.worker
        waiting = [self.core.tasks[c] for c in self.core.deps.descendants(tid)]
        if not self.core.cancel(tid, now):
            return {"cancelled": False, "state": t.state.value}
        if was_running and wid is not None:
            self._stop_on(wid, tid, "cancel", now)
            self._zombies.add(tid)
        self._release_reservation(tid, now)
        self._drop_paused(t)
        self._notify(t)
        self._notify_all(waiting)
        self._dispatch(now)
        err = await self._commit()
        if err is not None:
            return err
        return {"cancelled": True, "state": t.state.value}

    async def wait(
        self, ids: list[str], timeout: float | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        deadline = None if timeout is None else self.clock() + timeout
        for tid in ids:
            left = None if deadline is None else max(0.0, deadline - self.clock())
            t = self.core.tasks.get(tid)
            if t is not None:
                await self._until_final(t, left)
        # the states answered are in the journal (see ``result``): taken before the commit,
        # whose drain then covers them (a task may end while it waits)
        out = [self.status(tid) for tid in ids]
        err = await self._commit()
        return out if err is None else err

    def progress(self) -> dict[str, int]:
        """Cheap counters for polling (``stats`` walks the queues)."""
        return {
            "completed": self.core.completed,
            "live": self.core.live,
            "dispatched": self.dispatched,
        }

    async def stats(self) -> dict[str, Any]:
        s = self.core.stats()
        for tier, recent in self._waits.items():
            ws = sorted(recent)
            d = s["tiers"].setdefault(tier, {"queued": 0, "running": 0})
            d["started"] = len(ws)
            d["p50_wait_s"] = ws[len(ws) // 2]
            d["p99_wait_s"] = ws[min(len(ws) - 1, int(0.99 * len(ws)))]
        for name, p in s["pools"].items():
            ws_ = [w for w in self.workers.values() if w.pool.name == name]
            p["workers"] = len(ws_)
            p["ready_workers"] = sum(1 for w in ws_ if w.ready)
            p["slots"] = sum(w.pool.slots for w in ws_)
            p["busy_slots"] = sum(len(w.running) for w in ws_)
        s["workers"] = {
            w.id: {"pool": w.pool.name, "ready": w.ready, "running": len(w.running), **w.telemetry}
            for w in self.workers.values()
        }
        s["dispatched"] = self.dispatched
        s["uptime_s"] = self.clock() - self.started_at
        if self.store is not None:
            js = self.store.journal.stats
            s["store"] = {
                "sync": self.store.journal.sync_policy,
                "journal_bytes": js.bytes,
                "journal_records": js.records,
                "journal_writes": js.writes,
                "journal_syncs": js.syncs,
                "checkpoints": self.checkpoints_taken,
                "checkpoint_tasks": self.checkpoint_tasks,
                "results_pending": self.store.results.pending,
                # results files made from the journal (RecoveredState.convert_results)
                "results_converted": dict(self.store.conversions),
                "error": self._store_error,
                "recovery_s": round(self.store.report.seconds, 3),
                # redelivered by the last recovery; of those, starts only a worker still knew
                "recovery_requeued": self.store.report.requeued,
                "recovery_started_by_workers": self.store.report.started_by_workers,
                # large values (store.inline_max_bytes): blobs written here, object refs handed out
                "blobs": dict(self.blob_counts),
            }
        s["rss_mb"] = _rss_mb()
        return s

    async def refresh_telemetry(self) -> None:
        for w in list(self.workers.values()):
            if w.ready:
                try:
                    w.telemetry = dict(await self.spawner.telemetry(w.handle))
                except Exception:
                    pass

    async def shutdown(self) -> int:
        """Stop the workers and close the store (the queue stays in it for the next start)."""
        n = 0
        for w in list(self.workers.values()):
            self.workers.pop(w.id, None)
            self.spawner.kill(w.handle)
            n += 1
        if self.store is not None:
            store, self.store, self.recorder = self.store, None, None
            if self._loop_task is not None:
                self._loop_task.cancel()
            await asyncio.to_thread(store.close)  # journal closed, results flushed: durable
            garbage, self._blob_garbage = self._blob_garbage, []
            if garbage and self.blobs is not None:
                await asyncio.to_thread(self._delete_quietly, garbage)
        return n
