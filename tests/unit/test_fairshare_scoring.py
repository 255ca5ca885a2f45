"""VTC fair share, the weighted scorer, victim choice and the dependency graph."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from raysched.errors import DependencyError
from raysched.policy.deps import DependencyGraph
from raysched.policy.fairshare import FairShare
from raysched.policy.scoring import PROFILES, CostModel, Scorer, Weights
from raysched.policy.task import Task
from raysched.policy.victims import LowestRankVictim
from raysched.settings import PolicySettings

# -- fair share -------------------------------------------------------------------------------


def test_returning_tenant_is_lifted_to_least_active_counter() -> None:
    fs = FairShare()
    fs.activate("a")
    fs.activate("b")
    fs.charge("a", 10.0)
    fs.charge("b", 4.0)
    fs.activate("c")  # new: 0 -> lifted to min(10, 4)
    assert fs.counters["c"] == pytest.approx(4.0)
    fs.deactivate("c")
    fs.charge("b", 20.0)  # b: 24, a: 10
    fs.activate("c")  # returns with 4 -> lifted to 10 (idle time banks no credit)
    assert fs.counters["c"] == pytest.approx(10.0)


def test_returning_tenant_is_never_lowered() -> None:
    fs = FairShare()
    fs.activate("a")
    fs.activate("b")
    fs.charge("b", 50.0)
    fs.deactivate("b")
    fs.charge("a", 5.0)
    fs.activate("b")
    assert fs.counters["b"] == pytest.approx(50.0)


def test_first_tenant_keeps_its_counter() -> None:
    fs = FairShare()
    fs.activate("a")
    fs.charge("a", 3.0)
    fs.deactivate("a")
    fs.activate("b")  # nobody else active: nothing to lift to
    assert fs.counters["b"] == 0.0
    assert fs.counters["a"] == pytest.approx(3.0)


def test_factor_least_served_is_one_most_served_is_zero() -> None:
    fs = FairShare()
    for t in "abc":
        fs.activate(t)
    fs.charge("a", 2.0)
    fs.charge("b", 6.0)
    fs.charge("c", 10.0)
    assert fs.factor("a") == 1.0
    assert fs.factor("c") == 0.0
    assert fs.factor("b") == pytest.approx(0.5)
    fs.deactivate("c")  # only active tenants set the span
    assert fs.factor("b") == 0.0
    assert fs.factor("a") == 1.0


def test_factor_all_equal_or_empty_is_one() -> None:
    fs = FairShare()
    assert fs.factor("anyone") == 1.0
    fs.activate("a")
    fs.charge("a", 5.0)
    assert fs.factor("a") == 1.0
    fs.activate("b")  # lifted to 5: equal
    assert fs.factor("a") == fs.factor("b") == 1.0


def test_weights_divide_service() -> None:
    fs = FairShare({"big": 4.0})
    fs.activate("big")
    fs.activate("small")
    fs.charge("big", 8.0)
    fs.charge("small", 4.0)
    assert fs.counters["big"] == pytest.approx(2.0)
    assert fs.counters["small"] == pytest.approx(4.0)
    assert fs.factor("big") == 1.0 and fs.factor("small") == 0.0


def test_activation_is_counted_per_task() -> None:
    fs = FairShare()
    fs.activate("a")
    fs.activate("a")
    fs.deactivate("a")
    assert "a" in fs.active
    fs.deactivate("a")
    assert "a" not in fs.active
    assert fs.snapshot() == {"a": 0.0}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["act", "deact", "charge"]),
            st.sampled_from("abcd"),
            st.floats(min_value=0.0, max_value=100.0),
        ),
        max_size=40,
    )
)
def test_fair_share_invariants(ops: list[tuple[str, str, float]]) -> None:
    fs = FairShare()
    live: dict[str, int] = {}
    for op, tenant, amount in ops:
        if op == "act":
            before = dict(fs.counters)
            was_active = live.get(tenant, 0) > 0
            others = [fs.counters.get(t, 0.0) for t, n in live.items() if n > 0 and t != tenant]
            fs.activate(tenant)
            live[tenant] = live.get(tenant, 0) + 1
            if not was_active:
                expect = max(before.get(tenant, 0.0), min(others, default=0.0))
                assert fs.counters[tenant] == pytest.approx(expect)
        elif op == "deact" and live.get(tenant, 0) > 0:
            fs.deactivate(tenant)
            live[tenant] -= 1
        elif op == "charge":
            before_c = fs.counters.get(tenant, 0.0)
            fs.charge(tenant, amount)
            assert fs.counters[tenant] == pytest.approx(before_c + amount)
        active = [t for t, n in live.items() if n > 0]
        assert set(fs.active) == set(active)
        for t in active:
            assert 0.0 <= fs.factor(t) <= 1.0
        if active:
            lo = min(active, key=lambda t: fs.counters.get(t, 0.0))
            assert fs.factor(lo) == 1.0
            # the cached bounds give exactly what a fresh min/max over active tenants gives
            vals = [fs.counters.get(t, 0.0) for t in active]
            lo_c, hi_c = min(vals), max(vals)
            for t in active:
                c = fs.counters.get(t, 0.0)
                expect = 1.0 if len(active) <= 1 or hi_c == lo_c else (hi_c - c) / (hi_c - lo_c)
                assert fs.factor(t) == pytest.approx(expect)


# -- scorer -----------------------------------------------------------------------------------
TASKS = st.builds(
    lambda arrival, prompt, hint, depth, deadline, tenant: _task(
        arrival, prompt, hint, depth, deadline, tenant
    ),
    st.floats(min_value=0.0, max_value=500.0),
    st.integers(min_value=0, max_value=20000),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=50.0)),
    st.integers(min_value=0, max_value=20),
    st.one_of(st.none(), st.floats(min_value=-100.0, max_value=1000.0)),
    st.sampled_from(["a", "b", "c"]),
)


def _task(
    arrival: float, prompt: int, hint: float | None, depth: int, deadline: float | None, tenant: str
) -> Task:
    t = Task("x", 5, arrival, 1, prompt, tenant, "batch", "simulate", "default", hint, deadline)
    t.depth = depth
    return t


@settings(max_examples=200, deadline=None)
@given(
    task=TASKS,
    now=st.floats(min_value=0.0, max_value=1000.0),
    profile=st.sampled_from(sorted(PROFILES)),
    with_fair=st.booleans(),
)
def test_inlined_score_equals_weighted_factors(
    task: Task, now: float, profile: str, with_fair: bool
) -> None:
    fair = FairShare() if with_fair else None
    if fair is not None:
        for t, c in (("a", 1.0), ("b", 3.0), ("c", 2.0)):
            fair.activate(t)
            fair.charge(t, c)
    sc = Scorer(PROFILES[profile], fair=fair)
    factors = sc.factors(task, now)
    assert set(factors) == {"urgency", "age", "size", "depth", "fair"}
    assert all(0.0 <= v <= 1.0 for v in factors.values())
    w = sc.w
    expected = sum(getattr(w, k) * v for k, v in factors.items())
    assert sc.score(task, now) == pytest.approx(expected, abs=1e-9)


def test_score_prefers_short_urgent_deep_old() -> None:
    sc = Scorer(Weights())
    base = _task(0.0, 1000, None, 0, None, "a")
    assert sc.score(_task(0.0, 10, None, 0, None, "a"), 0.0) > sc.score(base, 0.0)
    assert sc.score(_task(0.0, 1000, None, 0, 5.0, "a"), 0.0) > sc.score(base, 0.0)
    assert sc.score(_task(0.0, 1000, None, 4, None, "a"), 0.0) > sc.score(base, 0.0)
    assert sc.score(base, 30.0) > sc.score(base, 0.0)


def test_weights_validation_and_profiles() -> None:
    with pytest.raises(ValueError):
        Weights(age=-0.1)
    assert set(PROFILES) == {"responsive", "throughput", "balanced"}


def test_cost_model() -> None:
    cm = CostModel()
    t = _task(0.0, 1000, None, 0, None, "a")
    assert cm.first_step_s(t) == pytest.approx(0.2)
    t.steps = 500
    assert cm.recompute_s(t) == pytest.approx(0.3)
    assert CostModel(recompute=False).recompute_s(t) == 0.0
    hinted = _task(0.0, 0, 1.5, 0, None, "a")
    assert cm.first_step_s(hinted) == 1.5 and cm.known_size_s(hinted) == 1.5
    assert cm.first_step_s(_task(0.0, 0, None, 0, None, "a")) == 0.0


# -- victims ----------------------------------------------------------------------------------
def test_victim_prefers_soonest_stop_then_worst_rank_then_least_service() -> None:
    def t(tid: str, prio: int, service: float = 0.0) -> Task:
        x = Task(tid, prio, 0.0, 1)
        x.service_s = service
        return x

    def rank(x: Task) -> tuple[float, ...]:
        return (float(x.priority),)

    sel = LowestRankVictim()
    inc = t("inc", 0)
    running = [t("a", 5, 1.0), t("b", 9, 3.0), t("c", 9, 2.0), t("d", 0)]
    assert sel.choose(inc, running, rank).id == "c"  # type: ignore[union-attr]
    eta = {"a": 0.0, "b": 2.0, "c": 2.0, "d": 0.0}
    assert sel.choose(inc, running, rank, lambda x: eta[x.id]).id == "a"  # type: ignore[union-attr]
    assert sel.choose(t("eq", 9), running, rank) is None  # strict: no running rank is above 9
    assert sel.choose(t("mid", 5), running, rank).id == "c"  # type: ignore[union-attr]
    assert sel.choose(inc, running, lambda x: None) is None


# -- dependency graph -------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=25), seed=st.integers(0, 2**31), known=st.integers(0, 3)
)
def test_check_batch_orders_parents_first(n: int, seed: int, known: int) -> None:
    rnd = random.Random(seed)
    old = [f"k{i}" for i in range(known)]
    ids = [f"n{i}" for i in range(n)]
    batch: dict[str, list[str]] = {}
    for i, tid in enumerate(ids):
        pool = ids[:i] + old
        batch[tid] = rnd.sample(pool, rnd.randint(0, min(3, len(pool))))
    items = list(batch.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    order = DependencyGraph.check_batch(shuffled, set(old))
    assert sorted(order) == sorted(ids)
    pos = {t: i for i, t in enumerate(order)}
    for tid, parents in batch.items():
        for p in parents:
            if p in pos:
                assert pos[p] < pos[tid]
    # closing any path into a cycle is refused
    edges = [(c, p) for c, ps in batch.items() for p in ps if p in batch]
    if edges:
        child, parent = rnd.choice(edges)
        cyclic = {k: list(v) for k, v in shuffled.items()}
        cyclic[parent] = [*cyclic[parent], child]
        with pytest.raises(DependencyError):
            DependencyGraph.check_batch(cyclic, set(old))


def test_check_batch_errors() -> None:
    with pytest.raises(DependencyError, match="itself"):
        DependencyGraph.check_batch({"a": ["a"]}, set())
    with pytest.raises(DependencyError, match="unknown"):
        DependencyGraph.check_batch({"a": ["zz"]}, {"b"})
    assert DependencyGraph.check_batch({"a": ["b"]}, {"b": object()}) == ["a"]


def test_graph_succeeded_and_failed() -> None:
    g = DependencyGraph()
    assert g.add("c", ["p1", "p2"]) is True
    assert g.add("gc", ["c"]) is True
    assert g.add("free", []) is False
    assert g.ancestors_waiting("c") == {"p1", "p2"}
    assert g.succeeded("p1") == []
    assert g.succeeded("p2") == ["c"]
    assert "c" not in g.waiting
    g2 = DependencyGraph()
    g2.add("c", ["p"])
    g2.add("gc", ["c"])
    g2.add("ggc", ["gc"])
    assert g2.failed("p") == ["c", "gc", "ggc"]
    assert g2.waiting == {}


@pytest.mark.parametrize("w", [0.0, -1.0])
def test_tenant_weights_must_be_positive(w: float) -> None:
    """Counters grow by service / weight; a zero or negative weight would break that."""
    with pytest.raises(ValidationError, match="tenant weights must be > 0"):
        PolicySettings(tenant_weights={"a": 1.0, "b": w})
