"""The Ray Serve deployment of the HTTP API: an ingress class that builds ``create_app`` on each
replica, an actor caller that finds the scheduler by name, ``deploy`` for ``raysched start`` and
``build_app`` for ``serve deploy examples/serve_config.yaml``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError

from raysched.errors import SchedulerUnavailable
from raysched.http.app import create_app
from raysched.http.auth import TokenRecord, TokenStore
from raysched.settings import HTTPSettings, Settings

__all__ = ["ActorCaller", "HTTPIngress", "build_app", "deploy", "ingress_app"]

DEPLOYMENT_NAME = "RayschedHTTP"


class ActorCaller:
    """Calls the scheduler actor by name. While the actor restarts (``max_restarts=-1``) calls
    are retried for ``retry_s``; the ingress makes task ids before submitting, so a retried
    submission is recognised as the same one. Past that, or past ``timeout``: SchedulerUnavailable
    (HTTP 503)."""

    def __init__(self, actor_name: str, namespace: str, *, retry_s: float = 3.0) -> None:
        self.actor_name, self.namespace, self.retry_s = actor_name, namespace, retry_s
        self._handle: Any = None

    async def _resolve(self) -> Any:
        if self._handle is None:
            # a GCS round trip; off the event loop so other requests keep moving
            self._handle = await asyncio.to_thread(
                ray.get_actor, self.actor_name, namespace=self.namespace
            )
        return self._handle

    async def __call__(self, method: str, *args: Any, timeout: float) -> Any:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                handle = await self._resolve()
                ref = getattr(handle, method).remote(*args)
                return await asyncio.wait_for(ref, timeout)
            except (RayActorError, ValueError) as exc:  # ValueError: no actor by that name
                self._handle = None
                if time.monotonic() >= deadline:
                    raise SchedulerUnavailable(f"scheduler unavailable: {exc}") from exc
                await asyncio.sleep(0.2)
            except asyncio.TimeoutError:
                raise SchedulerUnavailable(
                    f"scheduler did not answer {method} within {timeout:g}s"
                ) from None


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class HTTPIngress:
    """One replica. Token records arrive as init arguments (hashes only), so a replica on another
    node authenticates without a shared file system; when the tokens file is readable there too,
    it is re-read as it changes, so new tokens work without a redeploy."""

    def __init__(
        self, settings: dict[str, Any], tokens: list[dict[str, Any]], tokens_file: str | None
    ) -> None:
        self.settings = Settings.model_validate(settings)
        self.tokens = TokenStore([TokenRecord.model_validate(t) for t in tokens], path=tokens_file)

    def __serve_build_asgi_app__(self) -> FastAPI:
        s = self.settings
        caller = ActorCaller(s.actor_name, s.namespace, retry_s=s.http.unavailable_retry_s)
        return create_app(s, caller, self.tokens if s.http.auth else None)


def ingress_app(settings: Settings) -> Any:
    """The bound Serve application for ``settings`` (num_replicas and friends from
    ``settings.http``)."""
    h = settings.http
    recs: list[TokenRecord] = []
    path: Path | None = None
    if h.auth:
        path = settings.tokens_path()
        recs = TokenStore.read(path)
    deployment: Any = HTTPIngress  # a Serve Deployment; its type is lost through the decorator
    return deployment.options(
        num_replicas=h.num_replicas,
        max_ongoing_requests=h.max_ongoing_requests,
        ray_actor_options={"num_cpus": h.replica_num_cpus},
    ).bind(
        settings.model_dump(mode="json"),
        [r.model_dump() for r in recs],
        None if path is None else str(path),
    )


def bind_host(h: HTTPSettings) -> str:
    # the unauthenticated mode never listens beyond this machine
    return h.host if h.auth else "127.0.0.1"


def deploy(settings: Settings) -> str:
    """Start Serve's proxy on ``settings.http`` host and port (if Serve is not running yet) and
    deploy the API; returns its base URL. Serve and the app outlive the calling process."""
    h = settings.http
    host = bind_host(h)
    serve.start(http_options={"host": host, "port": h.port})
    serve.run(ingress_app(settings), name=h.app_name, route_prefix=h.route_prefix)
    return f"http://{host}:{h.port}{h.route_prefix.rstrip('/')}"


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve deploy``: ``args`` may name ``config`` (a settings YAML),
    ``tokens_file`` and ``num_replicas``. The scheduler must already run (``raysched start
    --no-http``); until it answers, ``/readyz`` says 503."""
    settings = Settings.load(args.get("config"))
    upd = {k: args[k] for k in ("tokens_file", "num_replicas", "auth") if k in args}
    if upd:
        http = HTTPSettings.model_validate({**settings.http.model_dump(), **upd})
        settings = settings.model_copy(update={"http": http})
    return ingress_app(settings)
