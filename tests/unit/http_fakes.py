"""An in-process scheduler for HTTP unit tests: the real SchedulerService and WorkerCore, wired
without Ray, behind the same caller interface the Serve ingress uses."""

from __future__ import annotations

import asyncio
import copy
import inspect
from typing import Any

from raysched.errors import SchedulerUnavailable
from raysched.handlers import default_registry
from raysched.runtime.scheduler import SchedulerService
from raysched.runtime.worker import WorkerCore
from raysched.settings import PoolSettings, Settings


class _Worker(WorkerCore):
    def telemetry(self) -> dict[str, Any]:
        return {}  # the real one asks Ray which GPUs it holds; unit tests never import Ray


class InProcessSpawner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.svc: SchedulerService | None = None
        self._bg: set[asyncio.Future[None]] = set()

    def spawn(self, pool: PoolSettings, worker_id: str) -> _Worker:
        async def report(wid: str, events: list[dict[str, Any]]) -> None:
            assert self.svc is not None
            await self.svc.report(wid, copy.deepcopy(events))

        return _Worker(
            worker_id,
            default_registry(self.settings.handlers),
            report,
            slots=pool.slots,
            max_paused=pool.max_paused,
        )

    def kill(self, handle: WorkerCore) -> None:
        fut = asyncio.ensure_future(handle.shutdown())
        self._bg.add(fut)
        fut.add_done_callback(self._bg.discard)

    def ready(self, handle: WorkerCore) -> Any:
        return handle.ready()

    def lease(self, handle: WorkerCore) -> Any:
        return handle.lease()

    def assign(self, handle: WorkerCore, items: list[tuple[Any, ...]]) -> Any:
        return handle.assign(copy.deepcopy(items))

    def stop(self, handle: WorkerCore, tid: str, kind: str) -> Any:
        return handle.stop(tid, kind)

    async def telemetry(self, handle: WorkerCore) -> dict[str, Any]:
        return handle.telemetry()


class ServiceCaller:
    """Calls SchedulerService methods as the actor would (arguments and answers copied, as Ray's
    serialisation does). ``down`` simulates an unreachable scheduler."""

    def __init__(self, settings: Settings) -> None:
        spawner = InProcessSpawner(settings)
        self.svc = SchedulerService(settings, spawner)
        spawner.svc = self.svc
        self.down = False
        self.calls: list[str] = []

    async def __call__(self, method: str, *args: Any, timeout: float) -> Any:
        self.calls.append(method)
        if self.down:
            raise SchedulerUnavailable("scheduler unavailable: simulated")
        await self.svc.start()
        if method == "start":
            return await self.svc.start()
        if method == "stats":
            await self.svc.refresh_telemetry()
        out = getattr(self.svc, method)(*copy.deepcopy(args))
        if inspect.isawaitable(out):
            out = await asyncio.wait_for(out, timeout)
        return copy.deepcopy(out)
