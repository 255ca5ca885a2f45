"""Ray at the edge: the one place that turns the plain SchedulerService and WorkerCore classes into
actors. The scheduler is a named, detached, restartable async actor in its namespace: Ray's GCS is
the registry (clients find it by name) and, with one name, the leader election."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raysched.errors import SchedulerUnavailable
from raysched.handlers import default_registry
from raysched.runtime.channel import ChannelClient, ChannelServer
from raysched.runtime.scheduler import SchedulerService
from raysched.runtime.worker import WorkerCore
from raysched.settings import PoolSettings, Settings
from raysched.store.blobs import RESULT, BlobStore
from raysched.store.journal import JournalLocked
from raysched.store.records import split_done
from raysched.store.recovery import RecoveredState, recover
from raysched.store.results import ConvertJob, ConvertReport, convert_segments

__all__ = ["RaySpawner", "SchedulerActor", "WorkerActor", "get_scheduler", "start_scheduler"]

log = logging.getLogger("raysched")


class _WorkerActor:
    def __init__(
        self,
        worker_id: str,
        pool: dict[str, Any],
        aliases: dict[str, str],
        sched: str,
        ns: str,
        blobs: dict[str, Any] | None = None,
        remember_s: float = 10.0,
        encode_done: bool = False,
    ):
        p = PoolSettings.model_validate(pool)
        self._sched_name, self._ns = sched, ns
        self._sched: Any = None
        self._chan: ChannelServer | None = None
        # large results go to blob files (the scheduler serves them through the object store)
        self._blobs = BlobStore(blobs["root"], blobs["max_inline"]) if blobs else None
        self._blob_failed = False
        # the scheduler journals: successes go encoded, and it journals these bytes
        self._encode_done = encode_done
        self.core = WorkerCore(
            worker_id,
            default_registry(aliases),
            self._report,
            slots=p.slots,
            remember_s=remember_s,
            max_paused=p.max_paused,
            fetch=self._fetch if self._blobs is not None else None,
        )

    def _scheduler(self) -> Any:
        if self._sched is None:
            self._sched = ray.get_actor(self._sched_name, namespace=self._ns)
        return self._sched

    async def _report(self, wid: str, events: list[dict[str, Any]]) -> None:
        try:
            sched = self._scheduler()
            if self._blobs is not None:
                await self._offload(events)
            if self._encode_done:
                rest, done = split_done(events)
                if done is not None:
                    await sched.report.remote(wid, rest, done)
                    return
            await sched.report.remote(wid, events)
        except Exception:
            self._sched = None  # re-resolve by name next time (the scheduler may have restarted)
            raise

    async def _offload(self, events: list[dict[str, Any]]) -> None:
        """Large results go to a durable blob file and the report carries its descriptor: the
        value never passes through the scheduler's calls, journal or results files (the
        scheduler puts the file's bytes in the object store when a client asks for them)."""
        blobs = self._blobs
        assert blobs is not None
        large: list[tuple[dict[str, Any], bytes]] = []
        for ev in events:
            if ev["t"] == "done":
                data = blobs.encode_if_large(ev.get("result"))
                if data is not None:
                    large.append((ev, data))
        if not large:
            return
        try:
            descs = await asyncio.to_thread(
                blobs.write_many, [(data, ev["id"]) for ev, data in large], RESULT
            )
        except Exception as exc:  # no shared state directory here: inline, as before
            if not self._blob_failed:
                log.warning("worker cannot write result blobs (%s): sending them inline", exc)
                self._blob_failed = True
            return
        for (ev, _), desc in zip(large, descs, strict=True):
            ev["result"] = desc

    async def _fetch(self, tid: str, desc: dict[str, Any]) -> Any:
        """A large payload: from the object store when the scheduler still holds it, else from
        its blob file (after a scheduler restart)."""
        try:
            got = await self._scheduler().payload_ref.remote(tid)
            ref = got.get("ref") if isinstance(got, dict) else None
            if ref is not None:
                return await ref
        except Exception as exc:  # the scheduler is restarting, or the object is lost
            self._sched = None
            log.info("payload of %s not in the object store (%s): reading its blob", tid, exc)
        assert self._blobs is not None
        return await asyncio.to_thread(self._blobs.read, desc)

    async def ready(self) -> dict[str, Any]:
        info = await self.core.ready()
        info.setdefault("telemetry", {})["node_id"] = ray.get_runtime_context().get_node_id()
        if self._chan is None:
            self._chan = ChannelServer(self._on_frame)
            gc.freeze()  # start-up objects (Ray, imports) leave the collector's scans: fewer pauses
        try:
            host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            info["channel"] = await self._chan.start(host)
        except OSError as exc:  # no channel: the scheduler stays on Ray calls
            log.warning("worker %s: no direct channel: %s", self.core.id, exc)
        return info

    def _on_frame(self, op: str, args: Any) -> None:
        if op == "assign":
            self.core.assign_now(args)
        elif op == "stop":
            self.core.stop_now(*args)
        else:  # pragma: no cover
            log.warning("worker %s: unknown channel op %r", self.core.id, op)

    async def deliver(self, session: str, seq: int, op: str, args: Any) -> bool:
        """A channel frame sent through Ray (the channel's fallback); delivered once."""
        if self._chan is None:
            self._chan = ChannelServer(self._on_frame)
        return self._chan.deliver(session, seq, op, args)

    async def lease(self) -> None:
        await self.core.lease()

    async def assign(self, items: list[tuple[Any, ...]]) -> int:
        return await self.core.assign(items)

    async def stop(self, tid: str, kind: str) -> bool:
        return await self.core.stop(tid, kind)

    async def given(self) -> dict[str, int]:
        return self.core.given()

    async def telemetry(self) -> dict[str, Any]:
        return {**self.core.telemetry(), "node_id": ray.get_runtime_context().get_node_id()}

    async def shutdown(self) -> None:
        await self.core.shutdown()


WorkerActor = ray.remote(_WorkerActor)


class _WorkerRef:
    """The scheduler's handle on a worker: the actor and, once it is ready, the direct channel
    that carries ``assign`` and ``stop`` (Ray calls when there is none)."""

    __slots__ = ("actor", "chan")

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.chan: ChannelClient | None = None


class RaySpawner:
    """Creates workers as named, detached actors with their pool's resource shape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        st = settings.store
        # workers read payload blobs whenever there is a store (some may predate a change of
        # inline_max_bytes to null), and write result blobs unless it is null
        self._blobs = (
            {"root": settings.store_root(), "max_inline": st.inline_max_bytes}
            if st.enabled
            else None
        )
        # a start reaches the journal at most hold_starts_s + two flushes after the assignment
        # (the flush that holds its batch back, the first one after the hold: later when the
        # scheduler's loop is busy, hence the margin)
        self._remember_s = st.hold_starts_s + st.flush_interval_s + 5.0
        # with a journal, workers send successes encoded and the scheduler journals those bytes
        self._encode_done = st.enabled

    def spawn(self, pool: PoolSettings, worker_id: str) -> Any:
        opts: dict[str, Any] = {
            "name": worker_id,
            "namespace": self.settings.namespace,
            "lifetime": "detached",
            "num_cpus": pool.num_cpus,
            "num_gpus": pool.num_gpus,
            "max_concurrency": 1000,
            "max_restarts": 0,
        }
        if pool.resources:
            opts["resources"] = dict(pool.resources)
        if pool.memory:
            opts["memory"] = pool.memory
        return _WorkerRef(
            WorkerActor.options(**opts).remote(
                worker_id,
                pool.model_dump(),
                self.settings.handlers,
                self.settings.actor_name,
                self.settings.namespace,
                self._blobs,
                self._remember_s,
                self._encode_done,
            )
        )

    def kill(self, handle: _WorkerRef) -> None:
        if handle.chan is not None:
            handle.chan.close()
        try:
            ray.kill(handle.actor, no_restart=True)
        except Exception as exc:
            log.info("kill: %s", exc)

    async def ready(self, handle: _WorkerRef) -> Any:
        info = await handle.actor.ready.remote()
        chan = info.pop("channel", None) if isinstance(info, dict) else None
        if chan is not None and handle.chan is None:
            client = ChannelClient(handle.actor.deliver.remote)
            try:
                await client.connect(chan)
                handle.chan = client
            except Exception as exc:  # the worker is fine; only the shortcut is missing
                log.warning("no direct channel to %s: %s; using Ray calls", chan, exc)
        return info

    def lease(self, handle: _WorkerRef) -> Any:
        return handle.actor.lease.remote()

    async def channel_lost(self, handle: _WorkerRef) -> None:
        """Returns when the direct channel to the worker drops (never without one)."""
        if handle.chan is None:
            await asyncio.Event().wait()
        else:
            await handle.chan.lost.wait()

    def assign(self, handle: _WorkerRef, items: list[tuple[Any, ...]]) -> Any:
        if handle.chan is not None:
            return handle.chan.send("assign", items)
        return handle.actor.assign.remote(items)

    def stop(self, handle: _WorkerRef, tid: str, kind: str) -> Any:
        if handle.chan is not None:
            return handle.chan.send("stop", (tid, kind))
        return handle.actor.stop.remote(tid, kind)

    def telemetry(self, handle: _WorkerRef) -> Any:
        return handle.actor.telemetry.remote()


class _SchedulerActor:
    def __init__(self, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = Settings.model_validate(settings)
        # Workers a previous instance left are killed; what they ran is redelivered by recovery
        # (at-least-once), and events they still send name workers this instance never had.
        # With a store they are first asked which attempts they were given (answered while
        # recovery loads the journal): recovery counts those whose start the journal lacks.
        reaper = _Reaper(self.settings.namespace, ask=self.settings.store.enabled)
        try:
            store = _recover(self.settings, reaper) if self.settings.store.enabled else None
        finally:
            reaper()
        if store is not None:
            store.convert = _ray_converter()
        self.svc = SchedulerService(
            self.settings, RaySpawner(self.settings), store=store, objects=ray.put
        )
        gc.freeze()
        # After Ray restarts the actor nobody may call it, yet the recovered queue must drain:
        # queue a start on ourselves (it runs once the constructor returns). Sent from the
        # constructor, the call can reach the GCS while it still holds the actor as restarting:
        # it then fails at once ("The actor is restarting"), unless retried (seen once in CI: a
        # recovered queue that nobody called sat idle). Every method also starts the service.
        try:
            ray.get_runtime_context().current_actor.start.options(max_task_retries=-1).remote()
        except Exception as exc:  # pragma: no cover - the next call starts it instead
            log.warning("scheduler could not schedule its own start: %s", exc)

    async def pid(self) -> int:
        """The actor's process id (fault tests kill it)."""
        return os.getpid()

    async def start(self) -> dict[str, Any]:
        return await self.svc.start()

    async def ping(self) -> dict[str, Any]:
        await self.svc.start()
        return {"ok": True, "settings": self.settings.model_dump(mode="json")}

    async def submit(
        self, specs: list[dict[str, Any]], tenant: str | None = None
    ) -> dict[str, Any]:
        await self.svc.start()
        return await self.svc.submit(specs, tenant)

    async def status(self, tid: str) -> dict[str, Any]:
        self.svc.boot()
        return self.svc.status(tid)

    async def statuses(self, ids: list[str]) -> list[dict[str, Any]]:
        self.svc.boot()
        return [self.svc.status(t) for t in ids]

    async def tenant_of(self, tid: str) -> str | None:
        self.svc.boot()
        return self.svc.tenant_of(tid)

    async def result(self, tid: str, timeout: float | None = None) -> dict[str, Any]:
        self.svc.boot()
        return await self.svc.result(tid, timeout)

    async def stream(self, tid: str, after: int = 0, wait_s: float = 10.0) -> dict[str, Any]:
        self.svc.boot()
        return await self.svc.stream(tid, after, wait_s)

    async def payload_ref(self, tid: str) -> dict[str, Any]:
        """A worker asks for a large payload: ``{"ref": ObjectRef}`` while this instance holds
        it (the worker reads the blob file otherwise)."""
        return self.svc.payload_ref(tid)

    async def cancel(self, tid: str) -> dict[str, Any]:
        self.svc.boot()
        return await self.svc.cancel(tid)

    async def wait(
        self, ids: list[str], timeout: float | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        self.svc.boot()
        return await self.svc.wait(ids, timeout)

    async def stats(self) -> dict[str, Any]:
        self.svc.boot()
        await self.svc.refresh_telemetry()
        return await self.svc.stats()

    async def progress(self) -> dict[str, int]:
        self.svc.boot()
        return self.svc.progress()

    async def report(
        self, wid: str, events: list[dict[str, Any]], done: bytes | None = None
    ) -> int:
        self.svc.boot()
        return await self.svc.report(wid, events, done)

    async def shutdown(self) -> int:
        return await self.svc.shutdown()


SchedulerActor = ray.remote(_SchedulerActor)


class _ResultsConverter:
    """Makes results files from journal segments (``convert_segments``) in a process of its own,
    so that decoding and converting outcomes costs the scheduler's process nothing. An actor
    rather than a task: a task's worker process may be reaped when idle and started again
    (importing pyarrow) at the next conversion. It runs at background priority
    (``_background_priority``): results files can wait, the scheduler cannot."""

    def __init__(self) -> None:
        applied = _background_priority()
        if applied != "SCHED_IDLE":  # the scheduler's thread may wait behind conversions
            log.warning("results converter: SCHED_IDLE refused, running at %s", applied)

    def convert(self, job: ConvertJob) -> ConvertReport:
        return convert_segments(job)


def _background_priority() -> str:
    """Put every thread of this process at background priority; returns what was applied.

    ``SCHED_IDLE`` on Linux: the kernel gives such a thread the smallest weight there is, treats
    a core that runs only such threads as idle when it places a waking thread, and lets a waking
    normal thread preempt it at once. Else ``nice`` +10 per thread. Niceness alone does little
    here: Ray starts every worker process (the scheduler actor's included) at nice 15
    (``worker_niceness``), so +10 gives weight 15 against the scheduler's 36: the scheduler's
    thread waited behind the converter (benchmarks/RESULTS.md, durability)."""
    if not os.path.isdir("/proc/self/task"):  # not Linux: this thread (its pools inherit)
        with contextlib.suppress(OSError, AttributeError):
            os.nice(10)
            return "nice +10 (one thread)"
        return "normal"
    done: set[int] = set()
    try:
        # threads inherit the policy of their creator; one started meanwhile by a thread not yet
        # switched is caught by the next pass
        for _ in range(3):
            tids = {int(t) for t in os.listdir("/proc/self/task")} - done
            if not tids:
                return "SCHED_IDLE"
            for tid in tids:
                with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            done |= tids
        return "SCHED_IDLE"
    except (OSError, AttributeError):  # refused (a sandbox), or no SCHED_IDLE
        pass
    try:
        for tid in {int(t) for t in os.listdir("/proc/self/task")}:
            with contextlib.suppress(ProcessLookupError):
                nice = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + 10))
        return "nice +10"
    except OSError:
        return "normal"


def _ray_converter(timeout_s: float = 600.0) -> Callable[[ConvertJob], ConvertReport]:
    """Start the converter on this node (the journal is on its disk), owned by the scheduler
    actor (it goes when the scheduler goes; Ray restarts it if it dies), and return the
    function that runs a job on it."""
    node = ray.get_runtime_context().get_node_id()
    actor: Any = (
        ray.remote(_ResultsConverter)
        .options(
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        )
        .remote()
    )

    def run(job: ConvertJob) -> ConvertReport:
        try:
            report: ConvertReport = ray.get(actor.convert.remote(job), timeout=timeout_s)
        except GetTimeoutError:
            # stuck (a hung file system?): restart it rather than hold up every checkpoint
            ray.kill(actor, no_restart=False)
            raise
        return report

    return run


def _recover(
    settings: Settings,
    started: Callable[[], Mapping[str, int]] | None = None,
    wait_lock_s: float = 30.0,
) -> RecoveredState:
    """Load the durable state before the actor answers anything (Ray queues calls until the
    constructor returns, so nobody sees a half-loaded queue). A journal still locked by a dying
    predecessor is waited for."""
    st = settings.store
    deadline = time.monotonic() + wait_lock_s
    while True:
        try:
            state = recover(
                settings.store_root(),
                st.journal_dir,
                settings.policy,
                pools=[p.name for p in settings.pools],
                sync=st.sync,
                on_refused=log.warning,
                restore_finished=st.restore_finished,
                keep_snapshots=st.keep_snapshots,
                started=started,
            )
        except JournalLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
            continue
        for line in state.report.damaged:
            log.warning("recovery: %s", line)
        return state


class _Reaper:
    """The detached workers a previous scheduler instance left. Asked at once (with ``ask``)
    which attempts they were given; called, it waits for their answers until ``ask_s`` after
    the asking, kills them all, and returns task id -> attempt number (the highest any of them
    reports; the same on later calls). A worker not placed yet (no resources for it) never
    answers: the wait overlaps recovery's loading, so it costs a restart at most ``ask_s``."""

    def __init__(self, namespace: str, *, ask: bool, ask_s: float = 0.5) -> None:
        self.workers: list[Any] = []
        try:
            names = ray.util.list_named_actors(all_namespaces=True)
        except Exception:
            names = []
        for entry in names:
            if (
                isinstance(entry, dict)
                and entry.get("namespace") == namespace
                and str(entry.get("name", "")).startswith("raysched-w-")
            ):
                try:
                    self.workers.append(ray.get_actor(entry["name"], namespace=namespace))
                except Exception:
                    pass
        self.refs: list[Any] = [w.given.remote() for w in self.workers] if ask else []
        self.deadline = time.monotonic() + ask_s
        self.given: dict[str, int] | None = None

    def __call__(self) -> dict[str, int]:
        if self.given is not None:
            return self.given
        given: dict[str, int] = {}
        if self.refs:
            left = max(0.0, self.deadline - time.monotonic())
            done, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=left)
            for ref in done:
                try:
                    got = ray.get(ref)
                except Exception:  # a dying worker: what it ran is redelivered uncounted
                    continue
                for tid, attempt in got.items():
                    if attempt > given.get(tid, 0):
                        given[tid] = attempt
        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:
                pass
        self.given = given
        return given


def get_scheduler(settings: Settings) -> Any:
    try:
        return ray.get_actor(settings.actor_name, namespace=settings.namespace)
    except ValueError as exc:
        raise SchedulerUnavailable(
            f"no scheduler {settings.actor_name!r} in namespace {settings.namespace!r}"
        ) from exc


def start_scheduler(settings: Settings) -> Any:
    """Create (or find) the detached scheduler actor and wait until it is ready (its state
    recovered)."""
    settings = settings.resolved()
    handle: Any = SchedulerActor.options(
        name=settings.actor_name,
        namespace=settings.namespace,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=10_000,
        num_cpus=0,
        get_if_exists=True,
    ).remote(settings.model_dump(mode="json"))
    try:
        ray.get(handle.start.remote(), timeout=60)
    except RayActorError as exc:
        raise SchedulerUnavailable(f"scheduler failed to start: {exc}") from exc
    return handle
