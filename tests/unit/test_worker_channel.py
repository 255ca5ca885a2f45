"""The worker's execution (slots, threads, batching, stops) and the direct channel from the
scheduler to a worker, in one process without Ray."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from raysched.handlers import HandlerRegistry, default_registry
from raysched.runtime.channel import ChannelClient, ChannelServer, Dedup
from raysched.runtime.worker import WorkerCore


class Reports:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, wid: str, events: list[dict[str, Any]]) -> None:
        self.events.extend(events)

    def final(self) -> dict[str, dict[str, Any]]:
        return {e["id"]: e for e in self.events if e["t"] in ("done", "fail", "stopped", "paused")}


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def registry_with(**fns: Any) -> HandlerRegistry:
    r = default_registry()
    for name, fn in fns.items():
        r.register(name, fn)
    return r


def test_blocking_handlers_use_every_slot_and_no_more() -> None:
    lock = threading.Lock()
    now = {"running": 0, "peak": 0}

    def nap(payload: dict[str, Any]) -> int:
        with lock:
            now["running"] += 1
            now["peak"] = max(now["peak"], now["running"])
        time.sleep(0.2)
        with lock:
            now["running"] -= 1
        return int(payload["i"])

    async def main() -> tuple[float, Reports]:
        rep = Reports()
        w = WorkerCore("w1", registry_with(nap=nap), rep, slots=3)
        t0 = time.monotonic()
        w.assign_now([(f"t{i}", "nap", {"i": i}, 0) for i in range(6)])
        await until(lambda: len(rep.final()) == 6)
        return time.monotonic() - t0, rep

    dt, rep = asyncio.run(main())
    assert now["peak"] == 3  # three slots, three at once, never more
    assert 0.35 < dt < 1.0  # two rounds of 0.2 s, not six in a row
    fin = rep.final()
    assert all(fin[f"t{i}"]["t"] == "done" and fin[f"t{i}"]["result"] == i for i in range(6))
    assert all(fin[f"t{i}"]["ts0"] > 0 for i in range(6))


def test_fast_handlers_are_batched_and_errors_reported() -> None:
    def boom(payload: dict[str, Any]) -> None:
        raise ValueError("no")

    async def main() -> tuple[WorkerCore, Reports]:
        rep = Reports()
        w = WorkerCore("w1", registry_with(boom=boom), rep, slots=4)
        w.assign_now([("warm", "echo", {}, 0)])
        await until(lambda: len(rep.final()) == 1)
        w.assign_now([(f"e{i}", "echo", {"i": i}, 0) for i in range(500)])
        w.assign_now([("b", "boom", {}, 0), ("u", "no-such", {}, 0)])
        await until(lambda: len(rep.final()) == 503)
        return w, rep

    w, rep = asyncio.run(main())
    fin = rep.final()
    assert all(fin[f"e{i}"]["result"] == {"i": i} for i in range(500))
    assert fin["b"]["etype"] == "ValueError" and "ts0" in fin["b"]
    assert fin["u"]["etype"] == "UnknownHandler"
    assert w._threads.started <= 4 and w.executed == 502
    assert w._free == w.slots and not w._running


def test_stop_before_start_and_between_steps() -> None:
    def gen(payload: dict[str, Any]) -> Any:
        for i in range(1000):
            time.sleep(0.005)
            yield i

    async def main() -> Reports:
        rep = Reports()
        w = WorkerCore("w1", registry_with(gen=gen), rep, slots=1)
        w.assign_now(
            [("g", "gen", {}, 0), ("q", "gen", {}, 0), ("p", "echo", {}, 0), ("r", "gen", {}, 0)]
        )
        await until(lambda: any(e["t"] == "started" for e in rep.events))
        assert w.stop_now("q", "cancel") and w.stop_now("p", "cancel")  # still queued
        assert w.stop_now("r", "pause")  # paused before it started: no generator kept for it
        await asyncio.sleep(0.05)
        assert w.stop_now("g", "pause")
        await until(lambda: "g" in rep.final())
        assert not w.stop_now("nothing", "cancel")
        return rep

    rep = asyncio.run(main())
    fin = rep.final()
    assert fin["q"]["t"] == "stopped" and fin["p"]["t"] == "stopped"
    assert fin["g"]["t"] == "paused"
    r_events = [e["t"] for e in rep.events if e["id"] == "r"]
    assert r_events == ["paused", "evicted"]


def test_dedup_in_and_out_of_order() -> None:
    d = Dedup()
    assert [d.first_time("s", i) for i in (1, 2, 2, 1)] == [True, True, False, False]
    assert d.first_time("s", 5) and d.first_time("s", 4) and not d.first_time("s", 5)
    assert d.first_time("s", 3) and not d.first_time("s", 4)
    assert d.first_time("other", 1)


def test_channel_delivers_in_order_once_and_falls_back_to_ray() -> None:
    got: list[tuple[str, Any]] = []
    via_fallback: list[int] = []

    async def main() -> None:
        server = ChannelServer(lambda op, args: got.append((op, args)))
        info = await server.start("127.0.0.1")

        async def fallback(session: str, seq: int, op: str, args: Any) -> bool:
            via_fallback.append(seq)
            return server.deliver(session, seq, op, args)

        client = ChannelClient(fallback)
        await client.connect(info)
        for i in range(50):
            assert client.send("assign", [i]) is None
        assert client.send("stop", ("t", "cancel")) is None
        await until(lambda: len(got) == 51 and client.unacked == 0)
        assert got[:50] == [("assign", [i]) for i in range(50)]
        assert got[50] == ("stop", ("t", "cancel"))

        # a frame that was delivered but whose ack was lost is resent through Ray: delivered once
        client._unacked[51] = ("stop", ("t", "cancel"))
        server.close()
        client._transport.close()  # type: ignore[union-attr]
        await until(lambda: not client.alive)
        await asyncio.sleep(0.05)
        aw = client.send("assign", ["late"])
        assert aw is not None
        assert await aw is True
        assert via_fallback == [51, 52]
        assert got[-1] == ("assign", ["late"]) and len(got) == 52

        # a connection without the token is closed before anything it sends is read
        srv2 = ChannelServer(lambda op, args: got.append((op, args)))
        info2 = await srv2.start("127.0.0.1")
        refused: list[int] = []

        async def nowhere(session: str, seq: int, op: str, args: Any) -> None:
            refused.append(seq)

        bad = ChannelClient(nowhere)
        await bad.connect({**info2, "token": "wrong"})
        bad.send("assign", ["evil"])
        await until(lambda: not bad.alive)
        await asyncio.sleep(0.01)
        assert got[-1] == ("assign", ["late"]) and refused == [1]
        srv2.close()

    asyncio.run(main())


def test_a_full_worker_drops_the_paused_state_with_the_fewest_steps() -> None:
    """Past ``max_paused`` the worker drops the state cheapest to rebuild (fewest steps taken),
    not the oldest: resuming a long generation elsewhere recomputes all its tokens."""

    def gen(payload: dict[str, Any]) -> Any:
        for i in range(100_000):
            time.sleep(0.001)
            yield i

    async def main() -> Reports:
        rep = Reports()
        w = WorkerCore("w1", registry_with(gen=gen), rep, slots=2, max_paused=1)

        def steps(tid: str) -> int:
            return sum(e["steps"] for e in rep.events if e["t"] == "step" and e["id"] == tid)

        w.assign_now([("long", "gen", {}, 0)])
        await until(lambda: steps("long") >= 30)
        assert w.stop_now("long", "pause")
        await until(lambda: "long" in rep.final())
        w.assign_now([("short", "gen", {}, 0)])
        await until(lambda: steps("short") >= 1)
        assert w.stop_now("short", "pause")
        await until(lambda: any(e["t"] == "evicted" for e in rep.events))
        # the long generation is still held (a cancel finds it), the short one is gone
        kept = {tid: w.stop_now(tid, "cancel") for tid in ("long", "short")}
        assert kept == {"long": True, "short": False}
        return rep

    rep = asyncio.run(main())
    assert [e["id"] for e in rep.events if e["t"] == "evicted"] == ["short"]
    # after its pause, so that the scheduler, which homes a paused task, forgets it again
    short = [e["t"] for e in rep.events if e["id"] == "short" and e["t"] != "step"]
    assert short[-2:] == ["paused", "evicted"]


def test_a_worker_remembers_the_attempts_it_was_given_for_a_while() -> None:
    """``given``: what a restarted scheduler asks before it stops the workers its predecessor
    left (recovery counts the starts its journal lacked). The latest attempt per task, kept
    ``remember_s``; assignments without an attempt number are not remembered."""
    clock = [100.0]

    async def main() -> None:
        w = WorkerCore(
            "w1", registry_with(), Reports(), slots=2, remember_s=5.0, clock=lambda: clock[0]
        )
        w.assign_now([("a", "echo", {}, 0, 1), ("b", "echo", {}, 0, 1)])
        clock[0] = 103.0
        w.assign_now([("a", "echo", {}, 0, 2), ("old-style", "echo", {}, 0)])
        assert w.given() == {"a": 2, "b": 1}
        clock[0] = 107.0  # the first assignment is older than remember_s now
        w.assign_now([("c", "echo", {}, 0, 3)])
        assert w.given() == {"a": 2, "c": 3}
        clock[0] = 120.0
        w.assign_now([("d", "echo", {}, 0, 1)])
        assert w.given() == {"d": 1}
        await w.shutdown()

    asyncio.run(main())
