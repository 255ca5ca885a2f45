"""raysched: a Ray-native priority scheduler for LLM and batch inference (CONTRACT.md).

Importing raysched does not start Ray; ``connect()`` does, when no cluster is running."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raysched.errors import (
    DependencyError,
    InvalidTransition,
    QueueFull,
    RayschedError,
    SchedulerUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    UnknownHandler,
    ValidationFailed,
)
from raysched.models import DEFAULT_TIERS, TaskInfo, TaskSpec, TaskState
from raysched.settings import PolicySettings, PoolSettings, Settings

if TYPE_CHECKING:
    from raysched.client import Client

__all__ = [
    "DEFAULT_TIERS",
    "Client",
    "DependencyError",
    "InvalidTransition",
    "PolicySettings",
    "PoolSettings",
    "QueueFull",
    "RayschedError",
    "SchedulerUnavailable",
    "Settings",
    "TaskCancelled",
    "TaskFailed",
    "TaskInfo",
    "TaskNotFound",
    "TaskSpec",
    "TaskState",
    "UnknownHandler",
    "ValidationFailed",
    "connect",
]

__version__ = "0.1.0"


def connect(*args: Any, **kwargs: Any) -> Client:
    """Attach to the running scheduler (see ``raysched.client.connect``)."""
    from raysched.client import connect as _connect

    return _connect(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Client":
        from raysched.client import Client

        return Client
    raise AttributeError(name)
