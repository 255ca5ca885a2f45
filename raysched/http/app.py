"""The HTTP API (CONTRACT.md section 4) as a FastAPI app. It authenticates, validates and forwards;
every scheduling decision stays in the scheduler actor, reached through an async *caller*
(``await call("submit", specs, tenant, timeout=...)``) so the app runs the same behind Ray Serve
(``raysched.http.serve``) and in tests against an in-process scheduler.

Whatever a client sends, the answer is one of the documented statuses with the JSON error shape:
auth and the body limit run as ASGI middleware before anything parses the body; the request models
refuse what JSON allows but the rest of the system cannot carry (NaN, 1000-digit integers, lone
surrogates, deep nesting); responses are encoded so that no stored value can fail the encoder."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raysched.errors import SchedulerUnavailable, ValidationFailed
from raysched.handlers import default_registry
from raysched.http.auth import Principal, TokenStore
from raysched.http.metrics import CONTENT_TYPE_LATEST, HTTPMetrics
from raysched.http.quota import RateLimiter
from raysched.http.schemas import (
    BatchIn,
    BatchOut,
    CancelOut,
    ErrorOut,
    HealthOut,
    ResultOut,
    SubmitOut,
    TaskIn,
    TaskInfo,
)
from raysched.models import TaskState, new_task_id
from raysched.settings import Settings
from raysched.store.journal import loads

__all__ = ["APIError", "SafeJSONResponse", "SchedulerCaller", "create_app", "json_safe"]

log = logging.getLogger("raysched.http")

#: Routes that answer without a token: probes, scrapes and the schema.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_PRINCIPAL = "raysched.principal"  # scope key; never scope["state"], which a server may share
_TERMINAL = frozenset(s.value for s in TaskState if s.terminal)
_STATES = frozenset(s.value for s in TaskState)
# "<last step index>:<last state sent>"; the state is empty while none was sent yet (a fresh
# stream of a finished task sends its steps before its final state)
_EVENT_ID = re.compile(r"^(\d{1,18}):([a-z_]{0,16})$")

# scheduler error codes -> HTTP status; anything else the scheduler refuses is a conflict with its
# state (409), never a 5xx
_STATUS = {
    "invalid_request": 422,
    "unknown_handler": 422,
    "invalid_dependency": 422,
    "not_found": 404,
    "queue_full": 429,
    "scheduler_unavailable": 503,
}


class SchedulerCaller(Protocol):
    """Calls one scheduler actor method and returns its value. Raises SchedulerUnavailable when the
    scheduler cannot be reached within ``timeout`` seconds."""

    def __call__(self, method: str, *args: Any, timeout: float) -> Awaitable[Any]: ...


class APIError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _retry_after(seconds: float) -> dict[str, str]:
    s = seconds if math.isfinite(seconds) else 1.0
    return {"Retry-After": str(max(1, math.ceil(s)))}


# -- JSON that cannot fail ---------------------------------------------------------------------
def json_safe(value: Any, _depth: int = 0) -> Any:
    """A JSON-encodable copy: non-finite floats become null, bytes base64, anything else its
    ``str``. Results may come from Python-client tasks whose handlers return arbitrary objects."""
    if _depth > 100:
        return "<nested too deep>"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


def _dumps(content: Any) -> bytes:
    try:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        # ASCII escapes carry lone surrogates that UTF-8 cannot
        return json.dumps(json_safe(content), ensure_ascii=True, separators=(",", ":")).encode()


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return SafeJSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


# -- ASGI middleware -----------------------------------------------------------------------------
def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class _Metrics:
    """Outermost: counts every answer by route template and status, timed to the first byte."""

    def __init__(self, app: ASGIApp, metrics: HTTPMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        seen = False

        async def _send(msg: Message) -> None:
            nonlocal seen
            if msg["type"] == "http.response.start" and not seen:
                seen = True
                self._observe(scope, int(msg["status"]), t0)
            await send(msg)

        try:
            await self.app(scope, receive, _send)
        except BaseException:
            if not seen:
                self._observe(scope, 500, t0)
            raise

    def _observe(self, scope: Scope, status: int, t0: float) -> None:
        route = scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        self.metrics.observe(name, str(scope.get("method", "")), status, time.perf_counter() - t0)


class _BodyLimit:
    """413 for a body over ``limit`` bytes, by Content-Length or by what actually arrives (chunked
    bodies have no length); the body is buffered (it is bounded) and replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                if not v.isdigit():
                    await _error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                    return
                if int(v) > self.limit:
                    await self._too_large(scope, receive, send)
                    return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client left before sending its body
            body: bytes = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def _receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, _receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = _error(
            413, "payload_too_large", f"request body over the limit of {self.limit} bytes"
        )
        await resp(scope, receive, send)


class _Auth:
    """Resolves the bearer token to a Principal before any body is read; 401 otherwise. In the
    local unauthenticated mode (``store`` None) everyone is tenant "default" with the admin role."""

    def __init__(self, app: ASGIApp, store: TokenStore | None) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if self.store is None:
            scope[_PRINCIPAL] = Principal("default", admin=True)
            await self.app(scope, receive, send)
            return
        token = None
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                scheme, _, rest = v.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
                break
        p = self.store.authenticate(token) if token else None
        if p is None:
            msg = "missing bearer token" if token is None else "invalid bearer token"
            resp = _error(401, "unauthorized", msg, {"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        scope[_PRINCIPAL] = p
        await self.app(scope, receive, send)


# -- documented error responses -----------------------------------------------------------------
_DESC = {
    400: "malformed JSON",
    401: "no token or a wrong one",
    404: "no such task, or another tenant's",
    409: "the task is already final",
    413: "body or payload over the size limit",
    422: "invalid request (the message names the field)",
    429: "queue or tenant quota full; retry after Retry-After seconds",
    503: "scheduler unreachable",
}
_RETRY_HEADER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        d: dict[str, Any] = {"model": ErrorOut, "description": _DESC[c]}
        if c in (429, 503):
            d["headers"] = _RETRY_HEADER
        out[c] = d
    return out


_TASK_ERRORS = _errors(401, 404, 413, 422, 503)

# one event of GET /v1/tasks/{id}/events (OpenAPI 3.2 ``itemSchema``); ``data`` is JSON
_STATE_SCHEMA = {"type": "string", "enum": sorted(_STATES)}
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["state", "step", "error"]},
        "id": {"type": "string", "pattern": r"^\d+:[a-z_]*$"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["id", "state", "done"],
                        "properties": {
                            "id": {"type": "string"},
                            "state": _STATE_SCHEMA,
                            "done": {"type": "boolean"},
                        },
                    },
                    {
                        "type": "object",
                        "required": ["index", "output"],
                        "properties": {"index": {"type": "integer", "minimum": 1}, "output": {}},
                    },
                    {
                        "type": "object",
                        "required": ["error"],
                        "properties": {
                            "error": {
                                "type": "object",
                                "required": ["code", "message"],
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            }
                        },
                    },
                ]
            },
        },
    },
}


# -- the app ---------------------------------------------------------------------------------------
def create_app(
    settings: Settings,
    call: SchedulerCaller,
    tokens: TokenStore | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The API for ``settings.http``. ``tokens`` is required unless ``settings.http.auth`` is off
    (the local unauthenticated mode)."""
    from raysched import __version__

    h = settings.http
    if h.auth and tokens is None:
        raise ValidationFailed("http.auth is on: a token store is required")
    store = tokens if h.auth else None
    registry = default_registry(settings.handlers)
    tiers = settings.policy.tiers
    limiter = (
        RateLimiter(h.submissions_per_s, h.submissions_burst, clock=clock)
        if h.submissions_per_s
        else None
    )
    metrics = HTTPMetrics()

    app = FastAPI(
        title="raysched",
        version=__version__,
        description="Priority scheduler on Ray: submit, inspect, stream and cancel tasks.",
        docs_url=None,
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.metrics = metrics
    # added innermost first: metrics sees every answer, auth runs before the body is parsed
    app.add_middleware(_Auth, store=store)
    app.add_middleware(_BodyLimit, limit=h.max_body_bytes)
    app.add_middleware(_Metrics, metrics=metrics)

    # -- error mapping ---------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(SchedulerUnavailable)
    async def _unavailable(_: Request, exc: SchedulerUnavailable) -> Response:
        return _error(503, "scheduler_unavailable", str(exc), _retry_after(1))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errs = list(exc.errors())
        bad_json = next((e for e in errs if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            ctx = bad_json.get("ctx") or {}
            where: Sequence[Any] = bad_json.get("loc") or ()
            pos = where[1] if len(where) > 1 else "?"
            return _error(400, "malformed_json", f"body: {ctx.get('error', 'JSON')} at {pos}")
        parts = []
        for e in errs[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ())) or "request"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
        return _error(422, "invalid_request", "; ".join(parts) + more)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error in the HTTP front", exc_info=exc)
        return _error(500, "internal", "internal error")

    # -- helpers -----------------------------------------------------------------------------------
    async def sched(method: str, *args: Any, wait: float = 0.0) -> Any:
        return await call(method, *args, timeout=h.call_timeout_s + wait)

    def refused(resp: Any, tid: str | None = None) -> None:
        """Raise the APIError for a scheduler answer ``{"error": {...}}``, if it is one."""
        if not (isinstance(resp, dict) and isinstance(resp.get("error"), dict)):
            return
        e = resp["error"]
        code = str(e.get("code", "error"))
        status = _STATUS.get(code, 409)
        if status == 404 and tid is not None:
            raise _not_found(tid)
        headers = _retry_after(float(e.get("retry_after_s") or 1.0)) if status == 429 else None
        if status == 429:
            metrics.rejected.labels("queue").inc()
        raise APIError(status, code, str(e.get("message", code)), headers)

    def _not_found(tid: str) -> APIError:
        # the same answer for a missing task and another tenant's: existence is not disclosed
        return APIError(404, "not_found", f"no task {tid}")

    async def owned(p: Principal, tid: str) -> None:
        if not p.may_see(await sched("tenant_of", tid)):
            raise _not_found(tid)

    def spec_of(t: TaskIn, where: str) -> dict[str, Any]:
        if ":" in t.kind:
            raise APIError(
                422,
                "unknown_handler",
                f"{where}.kind: import paths are not accepted over HTTP; registered handlers: "
                f"{', '.join(registry.names())}",
            )
        if not registry.is_registered(t.kind):
            raise APIError(
                422,
                "unknown_handler",
                f"{where}.kind: unknown handler {t.kind!r}; registered: "
                f"{', '.join(registry.names())}",
            )
        if t.tier is not None and t.tier not in tiers:
            raise APIError(
                422,
                "invalid_request",
                f"{where}.tier: unknown tier {t.tier!r}; known tiers: {', '.join(tiers)}",
            )
        if t.tier is not None and t.priority is not None:
            raise APIError(422, "invalid_request", f"{where}: give a tier or a priority, not both")
        # measured as TaskSpec measures it, so the two limits agree
        size = len(json.dumps(t.payload, separators=(",", ":")))
        if size > h.max_payload_bytes:
            raise APIError(
                413,
                "payload_too_large",
                f"{where}.payload: {size} bytes; the limit is {h.max_payload_bytes}",
            )
        spec = t.model_dump(exclude_none=True, exclude_defaults=True)
        spec["kind"], spec["payload"] = t.kind, t.payload
        spec["id"] = new_task_id()
        return spec

    async def check_parents(p: Principal, tasks: Sequence[TaskIn]) -> None:
        """A task may only wait on tasks its tenant can see; any other id reads as unknown."""
        wanted = sorted({d for t in tasks for d in t.depends_on})
        if not wanted:
            return
        owners = await asyncio.gather(*(sched("tenant_of", d) for d in wanted))
        for tid, owner in zip(wanted, owners, strict=True):
            if not p.may_see(owner):
                raise APIError(422, "invalid_dependency", f"depends on unknown task {tid}")

    def admit(p: Principal, n: int) -> None:
        if limiter is None:
            return
        wait = limiter.take(p.tenant, n)
        if wait is not None:
            metrics.rejected.labels("rate").inc()
            raise APIError(
                429,
                "rate_limited",
                f"tenant {p.tenant!r} is over its rate of {h.submissions_per_s:g} submissions/s",
                _retry_after(wait),
            )

    bearer = HTTPBearer(auto_error=False, description="rs_<id>_<secret> from `raysched token`")

    async def principal(
        request: Request,
        _cred: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> Principal:
        p = request.scope.get(_PRINCIPAL)
        if not isinstance(p, Principal):  # only if the auth middleware was bypassed
            raise APIError(401, "unauthorized", "missing bearer token")
        return p

    TaskId = Path(min_length=1, max_length=128, description="task id")

    # -- tasks -----------------------------------------------------------------------------------
    @app.post(
        "/v1/tasks",
        status_code=202,
        response_model=SubmitOut,
        responses={
            200: {"model": SubmitOut, "description": "duplicate idempotency key: the first task"},
            **_errors(400, 401, 413, 422, 429, 503),
        },
        summary="Submit one task",
    )
    async def submit(body: TaskIn, p: Principal = Depends(principal)) -> Response:
        spec = spec_of(body, "body")
        admit(p, 1)
        await check_parents(p, [body])
        resp = await sched("submit", [spec], p.tenant)
        refused(resp)
        tid, state = resp["ids"][0], resp["states"][0]
        return SafeJSONResponse(
            {"id": tid, "state": state}, status_code=202 if tid == spec["id"] else 200
        )

    @app.post(
        "/v1/tasks/batch",
        status_code=202,
        response_model=BatchOut,
        responses=_errors(400, 401, 413, 422, 429, 503),
        summary="Submit tasks, all or nothing",
    )
    async def submit_batch(body: BatchIn, p: Principal = Depends(principal)) -> Response:
        if len(body.tasks) > h.max_batch:
            raise APIError(
                413,
                "payload_too_large",
                f"body.tasks: {len(body.tasks)} tasks; at most {h.max_batch} per batch",
            )
        specs = [spec_of(t, f"body.tasks.{i}") for i, t in enumerate(body.tasks)]
        admit(p, len(specs))
        await check_parents(p, body.tasks)
        resp = await sched("submit", specs, p.tenant)
        refused(resp)
        return SafeJSONResponse({"ids": resp["ids"]}, status_code=202)

    @app.get(
        "/v1/tasks/{task_id}",
        response_model=TaskInfo,
        responses=_TASK_ERRORS,
        summary="A task's status",
    )
    async def status(task_id: str = TaskId, p: Principal = Depends(principal)) -> Response:
        info = await sched("status", task_id)
        refused(info, task_id)
        if not isinstance(info, dict) or not p.may_see(info.get("tenant")):
            raise _not_found(task_id)
        return SafeJSONResponse(info)

    @app.get(
        "/v1/tasks/{task_id}/result",
        response_model=ResultOut,
        responses={
            202: {"model": ResultOut, "description": "not done yet"},
            **_TASK_ERRORS,
        },
        summary="A task's result; ?wait=S waits up to S seconds",
    )
    async def result(
        task_id: str = TaskId,
        wait: float = Query(0.0, ge=0, le=3600, allow_inf_nan=False, description="seconds"),
        p: Principal = Depends(principal),
    ) -> Response:
        await owned(p, task_id)
        w = min(wait, h.max_wait_s)
        r = await sched("result", task_id, w, wait=w)
        refused(r, task_id)
        out: dict[str, Any] = {"id": task_id, "state": r["state"], "done": bool(r["done"])}
        if r["done"]:
            if r["state"] == TaskState.SUCCEEDED.value:
                ref = r.get("result_ref")  # a large result: its JSON, from the object store
                out["result"] = json_safe(r.get("result") if ref is None else loads(await ref))
            else:
                out["error_type"] = r.get("error_type")
                out["error"] = r.get("error")
        return SafeJSONResponse(out, status_code=200 if r["done"] else 202)

    @app.delete(
        "/v1/tasks/{task_id}",
        response_model=CancelOut,
        responses={**_TASK_ERRORS, **_errors(409)},
        summary="Cancel a task",
    )
    async def cancel(task_id: str = TaskId, p: Principal = Depends(principal)) -> Response:
        await owned(p, task_id)
        r = await sched("cancel", task_id)
        refused(r, task_id)
        if not r.get("cancelled"):
            raise APIError(
                409, "not_cancellable", f"task {task_id} is already {r.get('state', 'final')}"
            )
        return SafeJSONResponse({"id": task_id, "cancelled": True, "state": r["state"]})

    @app.get(
        "/v1/tasks/{task_id}/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "server-sent events: `state` (data: id, state, done) and `step` "
                "(data: index, output); ends with the final state. Event ids are "
                "`<last step index>:<last state>`; send one back as Last-Event-ID to resume "
                "without repeats.",
                "content": {"text/event-stream": {"itemSchema": _SSE_EVENT}},
            },
            **_TASK_ERRORS,
        },
        summary="Server-sent events: state changes and step outputs",
    )
    async def events(
        task_id: str = TaskId,
        last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=64),
        p: Principal = Depends(principal),
    ) -> Response:
        after, seen = 0, None
        if last_event_id:
            m = _EVENT_ID.match(last_event_id)
            if m is None or (m.group(2) and m.group(2) not in _STATES):
                raise APIError(
                    422,
                    "invalid_request",
                    "header.Last-Event-ID: want '<step index>:<state>' as sent in an event id",
                )
            after, seen = int(m.group(1)), m.group(2) or None
        await owned(p, task_id)
        first = await sched("stream", task_id, after, 0.0)
        refused(first, task_id)
        return StreamingResponse(
            _event_stream(task_id, first, after, seen),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _event_stream(
        tid: str, r: dict[str, Any], after: int, seen: str | None
    ) -> AsyncIterator[bytes]:
        t_end = clock() + h.events_max_s
        last_sent = clock()
        while True:
            state, done = str(r["state"]), bool(r["done"])
            out: list[bytes] = []
            # a new state comes before the steps it produced; the final one after all of them
            if state != seen and not done:
                seen = state
                news = {"id": tid, "state": state, "done": False}
                out.append(_sse("state", f"{after}:{seen or ''}", news))
            for idx, val in r["items"]:
                after = int(idx)
                step = {"index": after, "output": json_safe(val)}
                out.append(_sse("step", f"{after}:{seen or ''}", step))
            if done and state != seen:
                seen = state
                final = {"id": tid, "state": state, "done": True}
                out.append(_sse("state", f"{after}:{seen}", final))
            now = clock()
            if out:
                yield b"".join(out)
                last_sent = now
            elif now - last_sent >= h.events_keepalive_s:
                yield b": keepalive\n\n"
                last_sent = now
            if done or now >= t_end:
                return
            try:
                r = await sched("stream", tid, after, h.events_poll_s, wait=h.events_poll_s)
            except SchedulerUnavailable as exc:
                err = {"error": {"code": "scheduler_unavailable", "message": str(exc)}}
                yield _sse("error", None, err)
                return
            if isinstance(r.get("error"), dict):  # the task vanished (e.g. a fresh scheduler)
                yield _sse("error", None, {"error": r["error"]})
                return

    # -- queues and probes ---------------------------------------------------------------------
    @app.get("/v1/queues", responses=_errors(401, 503), summary="Queue and pool statistics")
    async def queues(p: Principal = Depends(principal)) -> Response:
        st = await sched("stats")
        refused(st)
        if not p.admin and isinstance(st.get("fair_share"), dict):
            # other tenants' names and usage are theirs to see
            st["fair_share"] = {k: v for k, v in st["fair_share"].items() if k == p.tenant}
        return SafeJSONResponse(st)

    @app.get("/healthz", response_model=HealthOut, summary="Liveness")
    async def healthz() -> Response:
        return SafeJSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "not ready"}},
        summary="Readiness: the scheduler answers and has loaded its state",
    )
    async def readyz() -> Response:
        try:
            r = await call("start", timeout=min(5.0, h.call_timeout_s))
        except SchedulerUnavailable as exc:
            return SafeJSONResponse({"status": "unavailable", "detail": str(exc)}, 503)
        if not isinstance(r, dict) or not r.get("ready") or r.get("recovered") is False:
            return SafeJSONResponse({"status": "starting", "detail": str(r)[:500]}, 503)
        return SafeJSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
    )
    async def prometheus() -> Response:
        try:
            st = await call("stats", timeout=min(5.0, h.call_timeout_s))
        except SchedulerUnavailable:
            st = None
        metrics.update_scheduler(st if isinstance(st, dict) and "error" not in st else None)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # the schema names the handlers this deployment knows, so clients (and fuzzers) can tell
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = base_openapi()
            kind = doc.get("components", {}).get("schemas", {}).get("TaskIn", {})
            kind = kind.get("properties", {}).get("kind")
            if isinstance(kind, dict):
                kind["enum"] = registry.names()
        return app.openapi_schema or base_openapi()

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _sse(event: str, eid: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" + (f"id: {eid}\n" if eid is not None else "")
    # ASCII JSON has no newline, so one data line always suffices
    body = json.dumps(json_safe(data), ensure_ascii=True, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()
