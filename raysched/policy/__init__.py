"""The policy core: pure Python, no Ray import. The scheduler actor, the virtual-clock replay and
the benchmarks all drive these classes."""

from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.deps import DependencyGraph
from raysched.policy.fairshare import FairShare
from raysched.policy.levels import LevelSchedule
from raysched.policy.lifecycle import ALLOWED, Lifecycle, LogAudit
from raysched.policy.queues import (
    FCFSQueue,
    MLFQQueue,
    Policy,
    PriorityQueue,
    SRPTQueue,
    TaskQueue,
    make_queue,
)
from raysched.policy.scoring import PROFILES, CostModel, Scorer, Weights
from raysched.policy.task import Task
from raysched.policy.victims import LowestRankVictim, VictimSelector

__all__ = [
    "ALLOWED",
    "PROFILES",
    "CostModel",
    "Decision",
    "DependencyGraph",
    "FCFSQueue",
    "FairShare",
    "LevelSchedule",
    "Lifecycle",
    "LogAudit",
    "LowestRankVictim",
    "MLFQQueue",
    "Policy",
    "PriorityQueue",
    "SRPTQueue",
    "SchedulerCore",
    "Scorer",
    "Task",
    "TaskQueue",
    "VictimSelector",
    "Weights",
    "make_queue",
]
