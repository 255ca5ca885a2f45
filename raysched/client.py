"""The Python client (CONTRACT.md section 3). Task ids are made here, so a submission retried
after the scheduler actor restarted is recognised as the same task and runs once."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
)

from raysched.errors import (
    DependencyError,
    QueueFull,
    RayschedError,
    SchedulerUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    UnknownHandler,
    ValidationFailed,
)
from raysched.models import TaskInfo, TaskSpec, new_task_id
from raysched.settings import Settings

__all__ = ["Client", "connect"]

_ERRORS: dict[str, type[RayschedError]] = {
    "invalid_request": ValidationFailed,
    "unknown_handler": UnknownHandler,
    "invalid_dependency": DependencyError,
    "not_found": TaskNotFound,
}


def _raise_for(resp: Any) -> Any:
    if isinstance(resp, dict) and isinstance(resp.get("error"), dict):
        e = resp["error"]
        if e["code"] == "queue_full":
            raise QueueFull(e["message"], e.get("retry_after_s", 1.0))
        raise _ERRORS.get(e["code"], RayschedError)(e["message"])
    return resp


class Client:
    def __init__(self, handle: Any, settings: Settings, *, retry_s: float = 30.0) -> None:
        self._h = handle
        self.settings = settings
        self.retry_s = retry_s

    # -- plumbing: retry while the actor restarts ------------------------------------------------
    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                ref = getattr(self._h, method).remote(*args)
                return _raise_for(ray.get(ref, timeout=timeout))
            except (ActorUnavailableError, ActorDiedError, RayActorError) as exc:
                if time.monotonic() >= deadline:
                    raise SchedulerUnavailable(f"scheduler unavailable: {exc}") from exc
                time.sleep(0.2)
                try:
                    self._h = ray.get_actor(
                        self.settings.actor_name, namespace=self.settings.namespace
                    )
                except ValueError:
                    pass

    # -- the contract ----------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        tier: str | None = None,
        priority: int | None = None,
        tenant: str = "default",
        timeout_s: float | None = None,
        max_retries: int = 0,
        depends_on: Sequence[str] = (),
        size_hint: float | None = None,
        idempotency_key: str | None = None,
        prompt_tokens: int | None = None,
        deadline_s: float | None = None,
        gpu_memory_mb: int | None = None,
    ) -> str:
        spec: dict[str, Any] = {
            "kind": kind,
            "payload": dict(payload or {}),
            "tier": tier,
            "priority": priority,
            "tenant": tenant,
            "timeout_s": timeout_s,
            "max_retries": max_retries,
            "depends_on": tuple(depends_on),
            "size_hint": size_hint,
            "idempotency_key": idempotency_key,
            "prompt_tokens": prompt_tokens,
            "deadline_s": deadline_s,
        }
        if gpu_memory_mb is not None:
            spec["resources"] = {"gpu_memory_mb": gpu_memory_mb}
        return self.submit_batch([spec])[0]

    def submit_batch(self, tasks: Sequence[Mapping[str, Any] | TaskSpec]) -> list[str]:
        """One round trip; all or nothing. Task ids are made here; the scheduler validates every
        spec (a bad one raises ValidationFailed, and nothing of the batch is accepted)."""
        specs: list[dict[str, Any]] = []
        for t in tasks:
            if isinstance(t, TaskSpec):
                specs.append(t.model_dump(mode="json", exclude_none=True))
                continue
            d = {k: v for k, v in t.items() if v is not None}
            if "id" not in d:
                d["id"] = new_task_id()
            specs.append(d)
        resp = self._call("submit", specs)
        ids: list[str] = resp["ids"]
        return ids

    def status(self, tid: str) -> TaskInfo:
        return TaskInfo.model_validate(self._call("status", tid))

    def result(self, tid: str, timeout: float | None = 30.0) -> Any:
        r = self._call("result", tid, timeout)
        if not r["done"]:
            raise TimeoutError(f"task {tid} is still {r['state']} after {timeout}s")
        if r["state"] == "succeeded":
            ref = r.get("result_ref")  # a large result: its JSON, from the object store
            if ref is None:
                return r.get("result")
            try:
                return orjson.loads(ray.get(ref))
            except ObjectLostError:  # the scheduler restarted since: it reads the blob again
                r = self._call("result", tid, timeout)
                return orjson.loads(ray.get(r["result_ref"]))
        if r["state"] == "cancelled":
            raise TaskCancelled(tid)
        raise TaskFailed(tid, r["state"], r.get("error_type") or "Error", r.get("error") or "")

    def stream(self, tid: str, *, poll_s: float = 10.0) -> Iterator[Any]:
        """Step outputs of a stepwise task as they are produced; ends when the task ends."""
        after = 0
        while True:
            r = self._call("stream", tid, after, poll_s)
            for idx, val in r["items"]:
                after = idx
                yield val
            if r["done"] and not r["items"]:
                return

    def cancel(self, tid: str) -> bool:
        return bool(self._call("cancel", tid)["cancelled"])

    def wait(self, ids: Sequence[str], timeout: float | None = None) -> list[TaskInfo]:
        return [TaskInfo.model_validate(d) for d in self._call("wait", list(ids), timeout)]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("stats")
        return out

    def progress(self) -> dict[str, int]:
        """Cheap counters (completed, live, dispatched) for polling."""
        out: dict[str, int] = self._call("progress")
        return out

    def shutdown(self) -> None:
        """Stop the scheduler and its workers (``raysched stop``)."""
        try:
            self._call("shutdown")
        finally:
            ray.kill(self._h, no_restart=True)


def connect(
    address: str | None = None,
    *,
    namespace: str | None = None,
    name: str | None = None,
    start: bool = True,
    config: str | Path | None = None,
    settings: Settings | None = None,
    ray_init: Mapping[str, Any] | None = None,
) -> Client:
    """Attach to the running scheduler. With ``start`` (the default), start a local Ray and a
    scheduler when none is running; ``start=False`` raises SchedulerUnavailable instead."""
    from raysched.runtime.factory import get_scheduler, start_scheduler

    s = settings or Settings.load(config)
    upd: dict[str, Any] = {}
    if namespace is not None:
        upd["namespace"] = namespace
    if name is not None:
        upd["actor_name"] = name
    if upd:
        s = s.model_copy(update=upd)
    if not ray.is_initialized():
        kw: dict[str, Any] = {"namespace": s.namespace, "log_to_driver": False, **(ray_init or {})}
        try:
            ray.init(address=address or "auto", **kw)
        except ConnectionError:
            if not start or address not in (None, "local"):
                raise SchedulerUnavailable(f"no Ray cluster at {address or 'auto'}") from None
            ray.init(**kw)
    try:
        handle = get_scheduler(s)
        try:
            ray.get(handle.ping.remote(), timeout=30)
        except (RayActorError, GetTimeoutError) as exc:
            raise SchedulerUnavailable(f"scheduler not answering: {exc}") from exc
    except SchedulerUnavailable:
        if not start:
            raise
        handle = start_scheduler(s)
    return Client(handle, s)
