"""The HTTP API (CONTRACT.md section 4) against the real SchedulerService and WorkerCore wired in
process (no Ray): routes, every error status, tenant isolation, event streams, quotas, and a
fuzz run that finds no 5xx. The same surface runs through Ray Serve in
tests/integration/test_http.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raysched.http import TokenStore, create_app, create_token
from raysched.http.app import json_safe
from raysched.settings import PoolSettings, Settings
from tests.unit.http_fakes import ServiceCaller

ERROR_STATUSES = {400, 401, 404, 405, 409, 413, 422, 429, 503}
SLOW = {"prompt_tokens": 1, "output_tokens": 200, "decode_s_per_token": 0.02}


class API:
    def __init__(self, client: TestClient, tokens: dict[str, str], caller: ServiceCaller) -> None:
        self.c, self.tokens, self.caller = client, tokens, caller

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def submit(self, who: str, **task: Any) -> Any:
        return self.c.post("/v1/tasks", json=task, headers=self.h(who))

    def wait_state(self, who: str, tid: str, states: set[str], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = str(self.c.get(f"/v1/tasks/{tid}", headers=self.h(who)).json()["state"])
            if s in states:
                return s
            time.sleep(0.02)
        raise AssertionError(f"{tid} never reached {states}")


@contextmanager
def make_api(
    workers: int = 1, slots: int = 1, policy: dict[str, Any] | None = None, **http: Any
) -> Iterator[API]:
    s = Settings(
        pools=[PoolSettings(min_workers=workers, max_workers=workers, slots=slots)],
        policy=policy or {},
        http=http,
    )
    tokens: dict[str, str] = {}
    recs = []
    for who, tenant, admin in (("a", "acme", False), ("b", "bravo", False), ("ops", "ops", True)):
        tokens[who], rec = create_token(tenant, admin=admin)
        recs.append(rec)
    caller = ServiceCaller(s)
    app = create_app(s, caller, TokenStore(recs) if s.http.auth else None)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield API(client, tokens, caller)


@pytest.fixture
def api() -> Iterator[API]:
    with make_api() as a:
        yield a


def assert_error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    err: dict[str, Any] = body["error"]
    return err


# -- the happy paths -------------------------------------------------------------------------------
def test_submit_status_result(api: API) -> None:
    r = api.submit("a", kind="echo", payload={"x": [1, "ü"]}, tier="interactive")
    assert r.status_code == 202
    tid = r.json()["id"]
    assert r.json()["state"] in {"pending", "queued", "running", "succeeded"}
    res = api.c.get(f"/v1/tasks/{tid}/result", params={"wait": 5}, headers=api.h("a"))
    assert res.status_code == 200
    assert res.json() == {"id": tid, "state": "succeeded", "done": True, "result": {"x": [1, "ü"]}}
    info = api.c.get(f"/v1/tasks/{tid}", headers=api.h("a")).json()
    assert info["tenant"] == "acme" and info["tier"] == "interactive" and info["kind"] == "echo"


def test_result_is_202_while_running_and_failed_tasks_carry_the_error(api: API) -> None:
    tid = api.submit("a", kind="simulate", payload=SLOW).json()["id"]
    r = api.c.get(f"/v1/tasks/{tid}/result", headers=api.h("a"))
    assert r.status_code == 202 and r.json()["done"] is False
    api.c.delete(f"/v1/tasks/{tid}", headers=api.h("a"))
    bad = api.submit("a", kind="simulate", payload={"output_tokens": -1}).json()["id"]
    r = api.c.get(f"/v1/tasks/{bad}/result", params={"wait": 5}, headers=api.h("a"))
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == "failed" and body["error_type"] == "ValueError" and body["error"]


def test_batch_is_all_or_nothing(api: API) -> None:
    r = api.c.post(
        "/v1/tasks/batch",
        json={"tasks": [{"kind": "echo"}, {"kind": "echo", "priority": 0}]},
        headers=api.h("a"),
    )
    assert r.status_code == 202 and len(r.json()["ids"]) == 2
    before = api.caller.svc.core.live + api.caller.svc.core.completed
    r = api.c.post(
        "/v1/tasks/batch",
        json={"tasks": [{"kind": "echo"}, {"kind": "echo", "tier": "gold"}]},
        headers=api.h("a"),
    )
    err = assert_error(r, 422, "invalid_request")
    assert err["message"].startswith("body.tasks.1.tier: unknown tier 'gold'")
    assert api.caller.svc.core.live + api.caller.svc.core.completed == before


def test_cancel_then_conflict(api: API) -> None:
    tid = api.submit("a", kind="simulate", payload=SLOW).json()["id"]
    api.wait_state("a", tid, {"running"})
    r = api.c.delete(f"/v1/tasks/{tid}", headers=api.h("a"))
    assert r.status_code == 200 and r.json() == {"id": tid, "cancelled": True, "state": "cancelled"}
    assert_error(api.c.delete(f"/v1/tasks/{tid}", headers=api.h("a")), 409, "not_cancellable")


def test_idempotency_key_returns_the_first_id_per_tenant(api: API) -> None:
    first = api.submit("a", kind="echo", idempotency_key="k1")
    again = api.submit("a", kind="echo", idempotency_key="k1", payload={"other": 1})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = api.submit("b", kind="echo", idempotency_key="k1")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_queues_probes_metrics_openapi(api: API) -> None:
    api.submit("a", kind="echo")
    api.submit("b", kind="echo")
    q = api.c.get("/v1/queues", headers=api.h("a")).json()
    assert "tiers" in q and "pools" in q
    assert set(q.get("fair_share", {})) <= {"acme"}  # other tenants stay hidden
    assert "bravo" in api.c.get("/v1/queues", headers=api.h("ops")).json()["fair_share"]
    assert api.c.get("/healthz").json() == {"status": "ok"}
    assert api.c.get("/readyz").status_code == 200
    m = api.c.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert "raysched_scheduler_up 1.0" in m.text
    assert 'raysched_http_requests_total{method="POST",route="/v1/tasks",status="202"}' in m.text
    assert "raysched_queued_tasks{tier=" in m.text or "raysched_queued_tasks" in m.text
    spec = api.c.get("/openapi.json").json()
    for path in (
        "/v1/tasks",
        "/v1/tasks/batch",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/result",
        "/v1/tasks/{task_id}/events",
        "/v1/queues",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    props = spec["components"]["schemas"]["TaskIn"]["properties"]
    assert "tenant" not in props and "id" not in props
    assert props["kind"]["enum"] == ["echo", "simulate"]


# -- auth and isolation ---------------------------------------------------------------------------
def test_missing_or_wrong_token_is_401(api: API) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer rs_0000000000000000_nope"},
        {"Authorization": f"Basic {api.tokens['a']}"},
        {"Authorization": api.tokens["a"]},
    ):
        r = api.c.post("/v1/tasks", json={"kind": "echo"}, headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    # auth runs before the body is read: a malformed body without a token is still a 401
    assert_error(api.c.post("/v1/tasks", content=b"{"), 401)
    assert_error(api.c.get("/v1/anything"), 401)


def test_a_tenant_sees_and_cancels_only_its_own_tasks(api: API) -> None:
    tid = api.submit("a", kind="simulate", payload=SLOW).json()["id"]
    missing = assert_error(api.c.get("/v1/tasks/no-such-task", headers=api.h("b")), 404)
    for method, path in (
        ("GET", f"/v1/tasks/{tid}"),
        ("GET", f"/v1/tasks/{tid}/result"),
        ("GET", f"/v1/tasks/{tid}/events"),
        ("DELETE", f"/v1/tasks/{tid}"),
    ):
        err = assert_error(api.c.request(method, path, headers=api.h("b")), 404, "not_found")
        # the same words as for a task that does not exist
        assert err["message"] == missing["message"].replace("no-such-task", tid)
    assert api.c.get(f"/v1/tasks/{tid}", headers=api.h("a")).json()["state"] != "cancelled"
    # depending on another tenant's task reads as an unknown task
    r = api.submit("b", kind="echo", depends_on=[tid])
    assert_error(r, 422, "invalid_dependency")
    assert api.submit("a", kind="echo", depends_on=[tid]).status_code == 202
    # the admin sees and cancels everyone's
    assert api.c.get(f"/v1/tasks/{tid}", headers=api.h("ops")).json()["tenant"] == "acme"
    assert api.c.delete(f"/v1/tasks/{tid}", headers=api.h("ops")).status_code == 200


def test_tenant_comes_from_the_token_never_the_body(api: API) -> None:
    r = api.submit("a", kind="echo", tenant="bravo")
    err = assert_error(r, 422, "invalid_request")
    assert "body.tenant" in err["message"]
    assert_error(api.submit("a", kind="echo", id="chosen"), 422)


def test_unauthenticated_local_mode() -> None:
    with make_api(auth=False) as api:
        r = api.c.post("/v1/tasks", json={"kind": "echo"})
        assert r.status_code == 202
        info = api.c.get(f"/v1/tasks/{r.json()['id']}").json()
        assert info["tenant"] == "default"


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_statuses(api: API) -> None:
    a = api.h("a")
    js = {**a, "Content-Type": "application/json"}
    assert_error(api.c.post("/v1/tasks", content=b'{"kind": "echo",', headers=js), 400)
    err = assert_error(api.c.post("/v1/tasks", json={"kind": 5}, headers=a), 422)
    assert err["message"].startswith("body.kind:")
    err = assert_error(
        api.c.post(
            "/v1/tasks/batch", json={"tasks": [{"kind": "echo", "max_retries": -1}]}, headers=a
        ),
        422,
    )
    assert err["message"].startswith("body.tasks.0.max_retries:")
    assert_error(api.submit("a", kind="nope"), 422, "unknown_handler")
    err = assert_error(api.submit("a", kind="os:system", payload={"x": "rm -rf /"}), 422)
    assert err["code"] == "unknown_handler" and "import paths" in err["message"]
    assert_error(api.submit("a", kind="echo", tier="gold"), 422, "invalid_request")
    assert_error(api.submit("a", kind="echo", tier="batch", priority=3), 422)
    assert_error(api.submit("a", kind="echo", timeout_s=-1), 422)
    assert_error(api.c.post("/v1/tasks", json=[1, 2], headers=a), 422)
    assert_error(api.c.post("/v1/tasks", content=b"kind=echo", headers=a), 422)
    for raw in (b'{"kind":"echo","payload":{"x":NaN}}', b'{"kind":"echo","payload":{"x":1e999}}'):
        assert_error(api.c.post("/v1/tasks", content=raw, headers=js), 422)
    big_int = b'{"kind":"echo","payload":{"x":' + b"9" * 400 + b"}}"
    assert_error(api.c.post("/v1/tasks", content=big_int, headers=js), 422)
    deep = b'{"kind":"echo","payload":' + b'{"a":' * 200 + b"1" + b"}" * 201
    assert_error(api.c.post("/v1/tasks", content=deep, headers=js), 422)
    very_deep = b'{"kind":"echo","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert api.c.post("/v1/tasks", content=very_deep, headers=js).status_code in (400, 422)
    surrogate = b'{"kind":"echo","payload":{"x":"\\ud800"}}'
    assert_error(api.c.post("/v1/tasks", content=surrogate, headers=js), 422)
    assert_error(api.c.get("/v1/tasks/x/result", params={"wait": "nan"}, headers=a), 422)
    assert_error(api.c.get("/v1/tasks/x/result", params={"wait": -1}, headers=a), 422)
    assert_error(api.c.get("/v1/tasks/" + "x" * 200, headers=a), 422)
    assert_error(api.c.get("/nowhere", headers=a), 404, "not_found")
    assert_error(api.c.put("/v1/tasks", headers=a), 405)


def test_size_limits_are_413() -> None:
    with make_api(max_body_bytes=10_000, max_payload_bytes=1_000, max_batch=3) as api:
        a = api.h("a")
        r = api.c.post("/v1/tasks", content=b"x" * 20_000, headers=a)
        assert_error(r, 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(20):
                yield b" " * 1_000

        assert_error(api.c.post("/v1/tasks", content=chunks(), headers=a), 413)
        err = assert_error(api.submit("a", kind="echo", payload={"x": "y" * 2_000}), 413)
        assert err["message"].startswith("body.payload:")
        tasks = {"tasks": [{"kind": "echo"}] * 4}
        assert_error(api.c.post("/v1/tasks/batch", json=tasks, headers=a), 413)


# -- quotas and availability -----------------------------------------------------------------------
def test_submission_rate_is_429_with_retry_after() -> None:
    with make_api(submissions_per_s=2, submissions_burst=2) as api:
        codes = [api.submit("a", kind="echo").status_code for _ in range(4)]
        assert codes[:2] == [202, 202] and codes[2:] == [429, 429]
        r = api.submit("a", kind="echo")
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert api.submit("b", kind="echo").status_code == 202  # another tenant's bucket
        m = api.c.get("/metrics").text
        assert 'raysched_http_rejected_submissions_total{reason="rate"}' in m


def test_queued_task_quota_is_429_with_retry_after() -> None:
    with make_api(policy={"max_queued_per_tenant": 2}) as api:
        for _ in range(2):
            assert api.submit("a", kind="simulate", payload=SLOW).status_code == 202
        r = api.submit("a", kind="simulate", payload=SLOW)
        err = assert_error(r, 429, "queue_full")
        assert "acme" in err["message"] and r.headers["retry-after"].isdigit()
        assert api.submit("b", kind="echo").status_code == 202


def test_scheduler_down_is_503(api: API) -> None:
    api.caller.down = True
    r = api.submit("a", kind="echo")
    assert_error(r, 503, "scheduler_unavailable")
    assert r.headers["retry-after"] == "1"
    assert_error(api.c.get("/v1/tasks/x", headers=api.h("a")), 503)
    assert api.c.get("/healthz").status_code == 200
    assert api.c.get("/readyz").status_code == 503
    assert "raysched_scheduler_up 0.0" in api.c.get("/metrics").text


# -- event streams ---------------------------------------------------------------------------------
def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        ev: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            k, _, v = line.partition(": ")
            ev[k] = json.loads(v) if k == "data" else v
        if ev:
            events.append(ev)
    return events


def read_events(api: API, tid: str, last: str | None = None, limit: int | None = None) -> Any:
    headers = api.h("a") | ({"Last-Event-ID": last} if last else {})
    with api.c.stream("GET", f"/v1/tasks/{tid}/events", headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        if limit is None:
            return parse_sse(r.read().decode())
        buf = ""
        for chunk in r.iter_text():
            buf += chunk
            got = parse_sse(buf.rsplit("\n\n", 1)[0] + "\n\n") if "\n\n" in buf else []
            if len(got) >= limit:
                return got[:limit]
    raise AssertionError("stream ended early")


def test_events_in_order_then_resume_without_repeats(api: API) -> None:
    payload = {"prompt_tokens": 1, "output_tokens": 8, "decode_s_per_token": 0.03}
    tid = api.submit("a", kind="simulate", payload=payload).json()["id"]
    head = read_events(api, tid, limit=3)
    assert head[0]["event"] == "state"
    rest = read_events(api, tid, last=head[-1]["id"])
    events = head + rest
    steps = [e["data"]["index"] for e in events if e["event"] == "step"]
    assert steps == sorted(set(steps)) and len(steps) == 8  # every step once, in order
    outs = [e["data"]["output"] for e in events if e["event"] == "step"]
    assert outs == [f"tok{i} " for i in range(8)]
    assert events[-1]["event"] == "state" and events[-1]["data"]["state"] == "succeeded"
    assert events[-1]["data"]["done"] is True
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    # a reconnect after the end repeats nothing
    assert read_events(api, tid, last=events[-1]["id"]) == []
    # a fresh stream of a finished task replays its steps then the final state
    full = read_events(api, tid)
    assert [e["event"] for e in full] == ["step"] * 8 + ["state"]
    assert full[0]["id"] == f"{steps[0]}:"  # no state sent yet
    assert read_events(api, tid, last=full[3]["id"]) == full[4:]


def test_events_report_cancellation_and_refuse_bad_ids(api: API) -> None:
    tid = api.submit("a", kind="simulate", payload=SLOW).json()["id"]
    api.wait_state("a", tid, {"running"})
    api.c.delete(f"/v1/tasks/{tid}", headers=api.h("a"))
    events = read_events(api, tid)
    assert events[-1]["data"]["state"] == "cancelled"
    for bad in ("garbage", "1:nostate", "-1:running", "9" * 30 + ":running"):
        r = api.c.get(f"/v1/tasks/{tid}/events", headers=api.h("a") | {"Last-Event-ID": bad})
        assert_error(r, 422, "invalid_request")


# -- values that JSON cannot carry -----------------------------------------------------------------
def test_json_safe_handles_anything() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    got = json_safe({"f": float("nan"), "b": b"\x00\x01", 1: (Odd(), float("inf"))})
    assert got == {"f": None, "b": "AAE=", "1": ["odd", None]}
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    json.dumps(json_safe(deep))


# -- fuzz: nothing a client sends gives a 5xx ------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
task_like = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["echo", "simulate", "x:y", "", "nope"]) | st.text(max_size=5),
        "payload": json_values,
        "tier": st.sampled_from(["batch", "gold", ""]) | json_values,
        "priority": st.integers(-5, 200) | json_values,
        "timeout_s": json_values,
        "max_retries": json_values,
        "depends_on": st.lists(st.text(max_size=10), max_size=3) | json_values,
        "size_hint": json_values,
        "idempotency_key": json_values,
        "tenant": st.text(max_size=5),
        "prompt_tokens": json_values,
        "deadline_s": json_values,
    },
)


def _check(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.status_code in ERROR_STATUSES, r.status_code
        body = r.json()
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


def test_fuzzed_requests_never_give_a_5xx() -> None:
    with make_api(workers=2, slots=4) as api:
        tokens: list[dict[str, str]] = [api.h("a"), api.h("ops"), {}]

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            body=task_like | json_values,
            raw=st.binary(max_size=64),
            use_raw=st.booleans(),
            batch=st.booleans(),
            who=st.sampled_from([0, 1, 2]),
            tid=st.text(min_size=1, max_size=40),
            header=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        )
        def run(
            body: Any,
            raw: bytes,
            use_raw: bool,
            batch: bool,
            who: int,
            tid: str,
            header: str,
        ) -> None:
            h = {**tokens[who], "Content-Type": "application/json"}
            url = "/v1/tasks/batch" if batch else "/v1/tasks"
            data = {"tasks": [body, body]} if batch else body
            if use_raw:
                r = api.c.post(url, content=raw, headers=h)
            else:
                content = json.dumps(data, allow_nan=True).encode("utf-8", "surrogatepass")
                r = api.c.post(url, content=content, headers=h)
            _check(r)
            tid = quote(tid, safe="")
            for method, path in (
                ("GET", f"/v1/tasks/{tid}"),
                ("GET", f"/v1/tasks/{tid}/result"),
                ("DELETE", f"/v1/tasks/{tid}"),
            ):
                _check(api.c.request(method, path, headers=tokens[who]))
            extra = {"Last-Event-ID": header.strip()} if header.strip() else {}
            _check(api.c.get(f"/v1/tasks/{tid}/events", headers={**tokens[who], **extra}))

        run()
        # whatever was accepted is still a well-formed task
        q = api.c.get("/v1/queues", headers=api.h("ops"))
        assert q.status_code == 200


def test_no_route_answers_with_a_server_error_for_any_method(api: API) -> None:
    for path in ("/v1/tasks", "/v1/tasks/batch", "/v1/tasks/x", "/v1/queues", "/healthz"):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
            r = api.c.request(method, path, headers=api.h("a"))
            assert r.status_code < 500, (method, path, r.text)
