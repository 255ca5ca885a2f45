"""The HTTP front (CONTRACT.md section 4): a FastAPI app behind Ray Serve that authenticates,
validates and forwards to the scheduler actor. Importing this package does not import Ray; the
Serve parts (``deploy``, ``build_app``, ``ActorCaller``) load on first use."""

from __future__ import annotations

from typing import Any

from raysched.http.app import SchedulerCaller, create_app
from raysched.http.auth import Principal, TokenRecord, TokenStore, create_token
from raysched.http.quota import RateLimiter

__all__ = [
    "ActorCaller",
    "Principal",
    "RateLimiter",
    "SchedulerCaller",
    "TokenRecord",
    "TokenStore",
    "build_app",
    "create_app",
    "create_token",
    "deploy",
]

_SERVE = frozenset({"ActorCaller", "build_app", "deploy"})


def __getattr__(name: str) -> Any:
    if name in _SERVE:
        from raysched.http import serve

        return getattr(serve, name)
    raise AttributeError(name)
