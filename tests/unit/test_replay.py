"""Trace files and the virtual-clock replay (CONTRACT.md section 6)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from raysched.models import TraceRecord
from raysched.settings import PolicySettings
from raysched.sim.replay import VirtualReplay, replay_virtual
from raysched.sim.trace import TraceError, TraceSpec, generate_trace, read_trace, write_trace

POLICIES = ["fcfs", "priority", "mlfq", "srpt"]
SEEDS = [0, 1, 2]
SUMMARY_KEYS = {
    "policy",
    "clock",
    "workers",
    "tasks",
    "completed",
    "mean_jct_s",
    "p50_jct_s",
    "p99_jct_s",
    "max_wait_s",
    "preemptions",
    "by_tier",
    "by_tenant",
}


@functools.cache
def records(seed: int, n: int = 300) -> tuple[TraceRecord, ...]:
    return tuple(
        TraceRecord.model_validate(r) for r in generate_trace(TraceSpec(tasks=n, seed=seed))
    )


@functools.cache
def summary(seed: int, policy: str) -> dict[str, object]:
    return replay_virtual(records(seed), policy).as_dict()


# -- generation and files ---------------------------------------------------------------------
def test_generate_trace_is_deterministic_and_valid() -> None:
    a = generate_trace(TraceSpec(tasks=300, seed=7))
    b = generate_trace(TraceSpec(tasks=300, seed=7))
    c = generate_trace(TraceSpec(tasks=300, seed=8))
    assert a == b and a != c
    assert len(a) == 300 and len({r["id"] for r in a}) == 300
    arrivals = [r["arrival_s"] for r in a]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0
    assert {r["tier"] for r in a} == {"interactive", "batch"}
    for r in a:
        TraceRecord.model_validate(r)
        assert r["output_tokens"] >= 1 and r["prompt_tokens"] >= 20


def test_generate_pareto_and_unknown_dist() -> None:
    rows = generate_trace(TraceSpec(tasks=50, seed=1, dist="pareto"))
    assert len(rows) == 50 and all(1 <= r["output_tokens"] <= 8000 for r in rows)
    with pytest.raises(ValueError, match="dist"):
        generate_trace(TraceSpec(tasks=5, dist="uniform"))


def test_write_read_roundtrip(tmp_path: Path) -> None:
    rows = generate_trace(TraceSpec(tasks=120, seed=3))
    path = tmp_path / "t.jsonl"
    write_trace(path, rows)
    recs = read_trace(path)
    assert [r.id for r in recs] == [r["id"] for r in rows]
    for rec, row in zip(recs, rows, strict=True):
        assert {k: getattr(rec, k) for k in row} == row


def test_read_trace_sorts_by_arrival_and_accepts_optional_fields(tmp_path: Path) -> None:
    lines = [
        {"id": "b", "arrival_s": 2.0, "priority": 3, "prompt_tokens": 5, "output_tokens": 2},
        {"id": "a", "arrival_s": 1.0, "tier": "critical", "deadline_s": 4.0},
        "",
        {"id": "c", "arrival_s": 2.0, "depends_on": ["a", "b"], "size_hint": 0.5},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) if x else "" for x in lines) + "\n")
    recs = read_trace(path)
    assert [r.id for r in recs] == ["a", "b", "c"]
    assert recs[2].depends_on == ("a", "b")


BAD_LINES = [
    ('{"id": "x", "arrival_s": 1.0', "not JSON"),
    ('["not", "an", "object"]', "JSON object"),
    ('{"id": "x", "arrival_s": 1.0, "tier": "gold"}', "unknown tier"),
    ('{"id": "t0", "arrival_s": 1.0}', "duplicate id"),
    ('{"id": "x", "arrival_s": 1.0, "depends_on": ["later"]}', "does not come earlier"),
    ('{"id": "x", "arrival_s": -1.0}', "arrival_s"),
    ('{"id": "x", "arrival_s": 1.0, "tier": "batch", "priority": 5}', "not both"),
    ('{"id": "x", "arrival_s": 1.0, "colour": "red"}', "colour"),
]


@pytest.mark.parametrize(("bad", "why"), BAD_LINES)
def test_trace_errors_name_the_line(tmp_path: Path, bad: str, why: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"id": f"t{i}", "arrival_s": float(i)}) for i in range(2)]
    later = json.dumps({"id": "later", "arrival_s": 9.0})
    path.write_text("\n".join([good[0], "", good[1], bad, later]) + "\n")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    err = info.value
    assert err.line_no == 4
    assert err.line.strip() == bad
    assert "bad.jsonl:4:" in str(err)
    assert why in str(err)
    assert bad in str(err)
    assert err.code == "invalid_trace"


def test_parent_arriving_after_child_is_a_trace_error(tmp_path: Path) -> None:
    """Earlier in the file is not enough: the replay submits in arrival order, so a parent that
    arrives after its child would be unknown when the child is submitted."""
    path = tmp_path / "dep.jsonl"
    path.write_text(
        '{"id": "p", "arrival_s": 5.0}\n{"id": "c", "arrival_s": 1.0, "depends_on": ["p"]}\n'
    )
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert info.value.line_no == 2
    assert "p" in str(info.value)


def test_missing_trace_file(tmp_path: Path) -> None:
    from raysched.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="cannot read"):
        read_trace(tmp_path / "nope.jsonl")


def test_custom_tiers_in_trace(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "arrival_s": 0.0, "tier": "gold"}\n')
    assert read_trace(path, {"gold": 2})[0].tier == "gold"
    with pytest.raises(TraceError):
        read_trace(path)


# -- the replay ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_completes_every_task(policy: str, seed: int) -> None:
    s = summary(seed, policy)
    assert set(s) == SUMMARY_KEYS
    assert s["policy"] == policy and s["clock"] == "virtual" and s["workers"] == 4
    assert s["tasks"] == s["completed"] == 300
    by_tier = s["by_tier"]
    assert isinstance(by_tier, dict)
    assert sum(d["tasks"] for d in by_tier.values()) == 300
    for d in by_tier.values():
        assert set(d) == {"tasks", "mean_jct_s", "p99_jct_s", "p99_wait_s"}
        assert 0.0 <= d["p99_wait_s"] <= s["max_wait_s"]  # type: ignore[operator]
    by_tenant = s["by_tenant"]
    assert isinstance(by_tenant, dict)
    assert sum(d["tasks"] for d in by_tenant.values()) == 300
    assert all(set(d) == {"tasks", "service_s"} for d in by_tenant.values())
    assert 0.0 < s["p50_jct_s"] <= s["p99_jct_s"]  # type: ignore[operator]
    if policy == "fcfs":
        assert s["preemptions"] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_srpt_mean_jct_at_most_fcfs(seed: int) -> None:
    assert summary(seed, "srpt")["mean_jct_s"] <= summary(seed, "fcfs")["mean_jct_s"]  # type: ignore[operator]


@pytest.mark.parametrize("seed", SEEDS)
def test_mlfq_interactive_p99_wait_beats_fcfs(seed: int) -> None:
    mlfq = summary(seed, "mlfq")["by_tier"]["interactive"]["p99_wait_s"]  # type: ignore[index]
    fcfs = summary(seed, "fcfs")["by_tier"]["interactive"]["p99_wait_s"]  # type: ignore[index]
    assert mlfq < fcfs


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_is_deterministic(policy: str) -> None:
    recs = records(5, 200)
    assert replay_virtual(recs, policy).as_dict() == replay_virtual(recs, policy).as_dict()


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_charges_exactly_the_work(policy: str) -> None:
    """Without recompute every task receives exactly its prefill + decode time, and starts after
    it arrives and finishes after it starts."""
    recs = records(4, 200)
    vr = VirtualReplay(recs, PolicySettings(policy=policy, recompute_on_migrate=False), workers=3)
    s = vr.run()
    assert s.completed == 200
    by_id = {r.id: r for r in recs}
    for t in vr.core.tasks.values():
        r = by_id[t.id]
        assert t.service_s == pytest.approx(
            r.prompt_tokens * 0.0002 + r.output_tokens * 0.01, abs=1e-6
        )
        assert t.steps == r.output_tokens + 1
        assert r.arrival_s <= t.first_start <= t.finished_at  # type: ignore[operator]
    total = sum(d["service_s"] for d in s.by_tenant.values())
    assert total == pytest.approx(sum(t.service_s for t in vr.core.tasks.values()), abs=1e-3)


def test_replay_respects_dependencies() -> None:
    recs = [
        TraceRecord(id="p", arrival_s=0.0, tier="batch", prompt_tokens=10, output_tokens=50),
        TraceRecord(id="c", arrival_s=0.1, tier="interactive", output_tokens=2, depends_on=("p",)),
        TraceRecord(id="d", arrival_s=0.1, tier="interactive", output_tokens=2),
    ]
    for policy in POLICIES:
        vr = VirtualReplay(recs, PolicySettings(policy=policy), workers=2)
        assert vr.run().completed == 3
        p, c = vr.core.tasks["p"], vr.core.tasks["c"]
        assert c.first_start >= p.finished_at  # type: ignore[operator]


def test_one_worker_fcfs_is_sequential() -> None:
    recs = [TraceRecord(id=f"t{i}", arrival_s=0.0, output_tokens=10) for i in range(4)]
    s = replay_virtual(recs, "fcfs", workers=1)
    # each task is 1 decode step of 0.01 s x 10 (no prompt): finishes at 0.1, 0.2, 0.3, 0.4
    assert s.mean_jct_s == pytest.approx(0.25)
    assert s.max_wait_s == pytest.approx(0.3)


def test_priority_preempts_batch_for_interactive() -> None:
    recs = [
        TraceRecord(id="long", arrival_s=0.0, tier="batch", output_tokens=1000),
        TraceRecord(id="vip", arrival_s=1.0, tier="interactive", output_tokens=5),
    ]
    vr = VirtualReplay(recs, PolicySettings(policy="priority"), workers=1)
    s = vr.run()
    assert s.preemptions == 1
    vip = vr.core.tasks["vip"]
    assert vip.first_start == pytest.approx(1.0, abs=0.011)  # next step boundary
    assert s.by_tier["interactive"]["p99_wait_s"] < 0.02
    fcfs = replay_virtual(recs, "fcfs", workers=1)
    assert fcfs.by_tier["interactive"]["p99_wait_s"] > 8.0


@pytest.mark.parametrize("dist", ["lognormal", "pareto"])
def test_mlfq_with_recompute_beats_fcfs_at_load(dist: str) -> None:
    """With vLLM-style recompute on resuming elsewhere and 4 paused states per worker, mlfq at
    load 0.9 must still beat fcfs: preemptions that evict paused state, and moves of paused
    tasks, spend capacity, and spending a tenth of it keeps the queue growing. (Before pinned
    tasks and reluctant moves, mlfq took 1.7x fcfs's mean JCT on these traces.)"""
    recs = [
        TraceRecord.model_validate(r)
        for r in generate_trace(TraceSpec(tasks=2000, workers=4, load=0.9, dist=dist, seed=3))
    ]
    fcfs = replay_virtual(recs, "fcfs", 4, recompute=True)
    mlfq = replay_virtual(recs, "mlfq", 4, recompute=True)
    assert mlfq.completed == fcfs.completed == 2000
    assert mlfq.mean_jct_s < 0.7 * fcfs.mean_jct_s
    fcfs_wait = fcfs.by_tier["interactive"]["p99_wait_s"]
    assert mlfq.by_tier["interactive"]["p99_wait_s"] < 0.1 * fcfs_wait


def test_learned_first_slice_pays_on_a_floored_tail() -> None:
    """Pareto answers have a floor (hardly any batch answer is under 60 tokens): preempting a task
    just short of it throws the work away. With the first slice learned from finished tasks
    (``mlfq.learn_first_slice``) mlfq cuts the mean JCT and the preemptions on such a trace."""
    recs = [
        TraceRecord.model_validate(r)
        for r in generate_trace(TraceSpec(tasks=3000, workers=4, dist="pareto", seed=5))
    ]
    off = PolicySettings(mlfq={"learn_first_slice": False})
    blind = replay_virtual(recs, "mlfq", 4, settings=off)
    learned = replay_virtual(recs, "mlfq", 4)
    assert learned.completed == blind.completed == 3000
    assert learned.mean_jct_s < 0.97 * blind.mean_jct_s  # 8.04 s against 8.57 s
    assert learned.preemptions < 0.85 * blind.preemptions  # 2,919 against 4,115
