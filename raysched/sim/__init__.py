"""Trace files and the virtual-clock replay, driving the policy core as is."""

from raysched.sim.replay import Summary, VirtualReplay, replay_virtual, summarize, task_from_record
from raysched.sim.trace import TraceError, TraceSpec, generate_trace, read_trace, write_trace

__all__ = [
    "Summary",
    "TraceError",
    "TraceSpec",
    "VirtualReplay",
    "generate_trace",
    "read_trace",
    "replay_virtual",
    "summarize",
    "task_from_record",
    "write_trace",
]
