"""The ``raysched`` command line (CONTRACT.md section 5). Exit codes: 0 success, 1 task or job
failure, 2 bad usage or bad input (with the offending line), 3 scheduler unreachable."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from raysched.errors import RayschedError, SchedulerUnavailable, TaskCancelled, TaskFailed, ValidationFailed

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A priority scheduler for Ray.")
err = Console(stderr=True)
out = Console()

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


@app.callback()
def _root() -> None:
    """raysched: priorities, preemption and fair share for inference on Ray."""


def _die(code: int, msg: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _fail(exc: Exception) -> NoReturn:
    if isinstance(exc, SchedulerUnavailable):
        _die(EXIT_UNREACHABLE, str(exc))
    if isinstance(exc, (TaskFailed, TaskCancelled)):
        _die(EXIT_FAILED, str(exc))
    if isinstance(exc, (ValidationFailed, ValueError)):
        _die(EXIT_USAGE, str(exc))
    _die(EXIT_FAILED, f"{type(exc).__name__}: {exc}")


@app.command()
def replay(
    trace: Annotated[Path, typer.Argument(help="JSONL trace (CONTRACT.md section 6)")],
    policy: Annotated[str, typer.Option(help="fcfs | priority | mlfq | srpt")] = "mlfq",
    clock: Annotated[str, typer.Option(help="virtual | ray")] = "virtual",
    workers: Annotated[int, typer.Option(min=1, help="single-slot workers")] = 4,
    prefill_s_per_token: Annotated[float, typer.Option(min=0)] = 0.0002,
    decode_s_per_token: Annotated[float, typer.Option(min=0)] = 0.01,
    recompute: Annotated[
        bool, typer.Option(help="charge a recompute when a paused task resumes on another worker")
    ] = False,
    config: Annotated[Path | None, typer.Option(help="settings YAML (policy section is used)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON summary last")] = False,
) -> None:
    """Run a trace through the real policy code and print JCT / wait figures."""
    from raysched.policy.queues import Policy
    from raysched.settings import Settings
    from raysched.sim.trace import read_trace

    try:
        pol = Policy(policy)
    except ValueError:
        _die(EXIT_USAGE, f"unknown policy {policy!r}; choose fcfs, priority, mlfq or srpt")
    if clock not in ("virtual", "ray"):
        _die(EXIT_USAGE, f"unknown clock {clock!r}; choose virtual or ray")
    try:
        settings = Settings.load(config)
        records = read_trace(trace, settings.policy.tiers)
    except RayschedError as exc:
        _fail(exc)
    ps = settings.policy.model_copy(
        update={
            "policy": pol,
            "prefill_s_per_token": prefill_s_per_token,
            "decode_s_per_token": decode_s_per_token,
            "recompute_on_migrate": recompute,
        }
    )
    if clock == "virtual":
        from raysched.sim.replay import VirtualReplay

        summary = VirtualReplay(records, ps, workers=workers).run().as_dict()
    else:
        if pol is Policy.SRPT:
            _die(EXIT_USAGE, "srpt is the oracle of the virtual replay; a real scheduler cannot know it")
        from raysched.runtime.replay import replay_on_ray

        try:
            summary = replay_on_ray(records, settings.model_copy(update={"policy": ps}), workers=workers)
        except RayschedError as exc:
            _fail(exc)
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    out.print(
        f"[bold]{s['policy']}[/] on {s['workers']} workers ({s['clock']} clock): "
        f"{s['completed']}/{s['tasks']} tasks, mean JCT {s['mean_jct_s']:.3f}s, "
        f"p99 JCT {s['p99_jct_s']:.3f}s, max wait {s['max_wait_s']:.3f}s, "
        f"{s['preemptions']} preemptions"
    )
    tbl = Table("tier", "tasks", "mean JCT s", "p99 JCT s", "p99 wait s")
    for tier, d in s["by_tier"].items():
        tbl.add_row(tier, str(d["tasks"]), f"{d['mean_jct_s']:.3f}", f"{d['p99_jct_s']:.3f}", f"{d['p99_wait_s']:.3f}")
    out.print(tbl)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
