"""Ray at the edge: the scheduler service and worker (plain classes) and the factory that makes
them actors. Importing this package does not start Ray."""

from raysched.runtime.scheduler import SchedulerService, WorkerSpawner
from raysched.runtime.worker import WorkerCore

__all__ = ["SchedulerService", "WorkerCore", "WorkerSpawner"]
