"""The ``raysched`` command line (CONTRACT.md section 5). Exit codes: 0 success, 1 task or job
failure, 2 bad usage or bad input (with the offending line), 3 scheduler unreachable."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from raysched.errors import (
    RayschedError,
    SchedulerUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    ValidationFailed,
)

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="A priority scheduler for Ray.")
err = Console(stderr=True)
out = Console()

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


@app.callback()
def _root() -> None:
    """raysched: priorities, preemption and fair share for inference on Ray."""


def _die(code: int, msg: str) -> NoReturn:
    from rich.markup import escape

    # the message may quote the user's input: never read it as markup
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fail(exc: Exception) -> NoReturn:
    if isinstance(exc, SchedulerUnavailable):
        _die(EXIT_UNREACHABLE, str(exc))
    if isinstance(exc, (TaskFailed, TaskCancelled)):
        _die(EXIT_FAILED, str(exc))
    if isinstance(exc, (ValidationFailed, ValueError, TaskNotFound)):
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
    config: Annotated[
        Path | None, typer.Option(help="settings YAML (policy section is used)")
    ] = None,
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
            _die(
                EXIT_USAGE,
                "srpt is the oracle of the virtual replay; a real scheduler cannot know it",
            )
        from raysched.runtime.replay import replay_on_ray

        try:
            summary = replay_on_ray(
                records, settings.model_copy(update={"policy": ps}), workers=workers
            )
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
        tbl.add_row(
            tier,
            str(d["tasks"]),
            f"{d['mean_jct_s']:.3f}",
            f"{d['p99_jct_s']:.3f}",
            f"{d['p99_wait_s']:.3f}",
        )
    out.print(tbl)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


# -- runtime commands -----------------------------------------------------------------------------
Address = Annotated[str | None, typer.Option(help="Ray address (default: the running cluster)")]
Config = Annotated[Path | None, typer.Option(help="settings YAML")]


def _client(address: str | None, config: Path | None, start: bool = False) -> Any:
    from raysched.client import connect
    from raysched.settings import Settings

    try:
        settings = Settings.load(config)
    except RayschedError as exc:
        _fail(exc)
    # Ray 2.60 clusters from `ray start` use token auth; a CLI needs to say so to join one.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        return connect(address, settings=settings, start=start)
    except SchedulerUnavailable as exc:
        _die(EXIT_UNREACHABLE, f"{exc} (is it started? `raysched start`)")
    except ConnectionError as exc:
        _die(EXIT_UNREACHABLE, str(exc))


@app.command()
def demo(
    workers: Annotated[int, typer.Option(min=1, max=16)] = 4,
    seed: int = 7,
) -> None:
    """The main job on a laptop: local Ray, scheduler, a mixed workload, a live view, a summary."""
    from raysched.demo import run_demo

    summary = run_demo(out, workers=workers, seed=seed)
    if not summary.get("all_succeeded"):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def start(
    address: Address = None,
    config: Config = None,
    http: Annotated[
        bool, typer.Option("--http/--no-http", help="also deploy the HTTP API on Ray Serve")
    ] = True,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: http.port)")] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="local unauthenticated mode: no tokens, everyone is tenant 'default' with the "
            "admin role; binds to 127.0.0.1",
        ),
    ] = False,
) -> None:
    """Deploy the detached scheduler on a running Ray (or a new local one, via `ray start --head`,
    that outlives this command; `ray stop` ends it), and the HTTP API on Ray Serve."""
    import subprocess

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        ray.init(address=address or "auto", log_to_driver=False)
    except ConnectionError:
        if address is not None:
            _die(EXIT_UNREACHABLE, f"no Ray cluster at {address}")
        err.print("no running Ray found: starting one with `ray start --head`")
        r = subprocess.run(
            ["ray", "start", "--head", "--disable-usage-stats", "--include-dashboard=false"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            _die(EXIT_UNREACHABLE, f"`ray start --head` failed:\n{r.stderr[-2000:]}")
        ray.init(address="auto", log_to_driver=False)
    c = _client(address, config, start=True)
    st = c.stats()
    out.print(
        f"scheduler {c.settings.actor_name!r} running in namespace {c.settings.namespace!r}; "
        f"pools: {', '.join(st['pools'])}"
    )
    if http:
        _start_http(c.settings, port, no_auth)


def _start_http(settings: Any, port: int | None, no_auth: bool) -> None:
    from pydantic import ValidationError

    from raysched.http.auth import TokenStore
    from raysched.http.serve import deploy
    from raysched.settings import HTTPSettings

    upd: dict[str, Any] = {}
    if port is not None:
        upd["port"] = port
    if no_auth:
        upd["auth"], upd["host"] = False, "127.0.0.1"
    try:
        h = HTTPSettings.model_validate({**settings.http.model_dump(), **upd})
        s = settings.model_copy(update={"http": h})
        if h.auth and not TokenStore.read(s.tokens_path()):
            err.print(
                f"no HTTP tokens in {s.tokens_path()} yet: every request gets 401 until you run "
                "`raysched token create --tenant NAME`"
            )
        url = deploy(s)
    except (ValidationError, ValidationFailed) as exc:
        _die(EXIT_USAGE, str(exc))
    except Exception as exc:  # Serve start-up: port taken, proxy failure
        _die(EXIT_FAILED, f"HTTP API not deployed: {type(exc).__name__}: {exc}")
    mode = "token auth" if h.auth else "UNAUTHENTICATED local mode"
    out.print(f"HTTP API at {url} ({mode}, {h.num_replicas} replica(s))")


token_app = typer.Typer(no_args_is_help=True, help="HTTP bearer tokens.")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    tenant: Annotated[str, typer.Option(help="the tenant this token acts for")],
    admin: Annotated[bool, typer.Option("--admin", help="may see every tenant's tasks")] = False,
    tokens_file: Annotated[
        Path | None, typer.Option(help="tokens file (default: http.tokens_file)")
    ] = None,
    config: Config = None,
) -> None:
    """Add a token to the tokens file (which keeps only a salted hash) and print it, once."""
    from raysched.http.auth import TokenStore
    from raysched.settings import Settings

    try:
        path = tokens_file or Settings.load(config).tokens_path()
        token, rec = TokenStore.add(path, tenant, admin=admin)
    except RayschedError as exc:
        _fail(exc)
    except OSError as exc:
        _die(EXIT_USAGE, f"cannot write tokens file: {exc}")
    print(token)
    err.print(
        f"token {rec.id} for tenant {rec.tenant!r}{' (admin)' if admin else ''} added to {path}; "
        "it is shown only now"
    )


@app.command()
def stop(address: Address = None, config: Config = None) -> None:
    """Remove the Serve app, the scheduler and its workers (queue state on disk stays)."""
    c = _client(address, config)
    try:
        from ray import serve

        serve.delete(c.settings.http.app_name)
    except Exception as exc:  # no Serve app deployed is fine
        err.print(f"no HTTP app removed: {exc}")
    c.shutdown()
    out.print("scheduler stopped")


@app.command()
def submit(
    kind: str,
    payload: Annotated[str, typer.Option(help="JSON object")] = "{}",
    tier: str | None = None,
    priority: int | None = None,
    tenant: str = "default",
    wait: Annotated[bool, typer.Option("--wait", help="wait for the result")] = False,
    timeout: float = 300.0,
    address: Address = None,
    config: Config = None,
) -> None:
    """Submit one task; prints its id (and, with --wait, its result as JSON)."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        _die(EXIT_USAGE, f"--payload is not JSON: {exc.msg}\n  {payload}")
    if not isinstance(body, dict):
        _die(EXIT_USAGE, f"--payload must be a JSON object\n  {payload}")
    c = _client(address, config)
    try:
        tid = c.submit(kind, body, tier=tier, priority=priority, tenant=tenant)
        print(tid)
        if wait:
            print(json.dumps(c.result(tid, timeout=timeout), default=str))
    except TimeoutError as exc:
        _die(EXIT_FAILED, str(exc))
    except RayschedError as exc:
        _fail(exc)


@app.command()
def status(
    task_id: Annotated[str | None, typer.Argument()] = None,
    address: Address = None,
    config: Config = None,
) -> None:
    """A task's state, or the scheduler's queues when no id is given."""
    c = _client(address, config)
    try:
        if task_id is None:
            print(json.dumps(c.stats(), indent=2, default=str))
        else:
            print(c.status(task_id).model_dump_json(indent=2))
    except RayschedError as exc:
        _fail(exc)


@app.command()
def cancel(task_id: str, address: Address = None, config: Config = None) -> None:
    """Cancel a task."""
    c = _client(address, config)
    try:
        ok = c.cancel(task_id)
    except RayschedError as exc:
        _fail(exc)
    out.print("cancelled" if ok else "already finished")
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def top(
    address: Address = None,
    config: Config = None,
    interval: float = 1.0,
    count: Annotated[int, typer.Option(help="refreshes before exiting (0: until Ctrl-C)")] = 0,
) -> None:
    """Live view of tiers, levels, pools and throughput."""
    import time as _time

    from rich.live import Live
    from rich.table import Table

    c = _client(address, config)
    prev: tuple[float, int] | None = None
    n = 0
    with Live(console=out, refresh_per_second=4) as live:
        while count == 0 or n < count:
            st = c.stats()
            now = _time.monotonic()
            rate = 0.0 if prev is None else (st["completed"] - prev[1]) / max(1e-9, now - prev[0])
            prev = (now, st["completed"])
            tbl = Table(
                title=f"raysched: {st['live']} live, {st['completed']} done, "
                f"{rate:.1f} tasks/s, {st['preemptions']} preemptions"
            )
            for col in ("tier", "queued", "running", "p99 wait s"):
                tbl.add_column(col)
            for tier, d in sorted(st["tiers"].items()):
                tbl.add_row(
                    tier,
                    str(d.get("queued", 0)),
                    str(d.get("running", 0)),
                    f"{d.get('p99_wait_s', 0.0):.3f}",
                )
            tbl.caption = (
                "levels "
                + json.dumps(st["levels"])
                + " | pools "
                + ", ".join(
                    f"{p}: {d['busy_slots']}/{d['slots']} busy, {d['queued']} queued"
                    for p, d in st["pools"].items()
                )
            )
            live.update(tbl)
            n += 1
            if count == 0 or n < count:
                _time.sleep(interval)
