"""The command line against a real cluster started the way a user would: `raysched start` (which
runs `ray start --head`), submit, status, cancel, stop; bad input exits 2, no cluster exits 3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.ray

NS = f"raysched-cli-{uuid.uuid4().hex[:6]}"
STATE = tempfile.mkdtemp(prefix="raysched-cli-state-")
ENV = {
    **os.environ,
    "RAYSCHED_NAMESPACE": NS,
    "RAYSCHED_STATE_DIR": STATE,
    "RAY_AUTH_MODE": "token",
}


def rs(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["raysched", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


@pytest.fixture(scope="module")
def cli_cluster() -> Iterator[None]:
    r = subprocess.run(["ray", "status"], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode != 0, "a Ray cluster is already running; this module starts its own"
    try:
        yield
    finally:
        rs("stop", timeout=60)
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=ENV, timeout=120)
        shutil.rmtree(STATE, ignore_errors=True)


def py(code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A driver script against the running cluster (a user's Python program)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def test_unreachable_before_start() -> None:
    r = rs("status")
    assert r.returncode == 3, (r.stdout, r.stderr)


def test_cli_round_trip(cli_cluster: None) -> None:
    r = rs("start")
    assert r.returncode == 0, r.stderr[-2000:]
    assert NS in r.stdout
    r = rs("submit", "echo", "--payload", '{"hello": "cli"}', "--tier", "interactive", "--wait")
    assert r.returncode == 0, r.stderr[-2000:]
    tid, result = r.stdout.strip().splitlines()[-2:]
    assert json.loads(result) == {"hello": "cli"}
    r = rs("status", tid)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "succeeded"
    r = rs("submit", "simulate", "--payload", '{"output_tokens": 2000}')
    assert r.returncode == 0, r.stderr[-2000:]
    long_id = r.stdout.strip().splitlines()[-1]
    r = rs("cancel", long_id)
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = rs("status")
    assert r.returncode == 0 and "pools" in json.loads(r.stdout)
    r = rs("submit", "echo", "--payload", "{not json")
    assert r.returncode == 2 and "{not json" in r.stderr
    r = rs("submit", "nope", "--payload", "{}")
    assert r.returncode == 2 and "unknown handler" in r.stderr
    r = rs("status", "no-such-task")
    assert r.returncode == 2
    r = rs("top", "--count", "1", "--interval", "0")
    assert r.returncode == 0 and "raysched" in r.stdout
    r = rs("stop")
    assert r.returncode == 0
    assert rs("status").returncode == 3


def test_queue_survives_a_cluster_restart(cli_cluster: None) -> None:
    """`ray stop --force` with work queued, a brand-new Ray, `raysched start` on the same state
    directory: the queue comes back and drains."""
    r = rs("start")
    assert r.returncode == 0, r.stderr[-2000:]
    r = py(
        """
        import json, ray
        from raysched.client import connect
        from raysched.settings import Settings
        ray.init(address="auto", namespace="driver", log_to_driver=False)
        c = connect(start=False, settings=Settings())
        specs = [{"kind": "simulate", "tier": "batch",
                  "payload": {"output_tokens": 5, "decode_s_per_token": 0.01, "n": i}}
                 for i in range(200)]
        print(json.dumps(c.submit_batch(specs)))
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ids = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(ids) == 200
    # the whole cluster goes, with the scheduler and its workers, mid-run
    subprocess.run(["ray", "stop", "--force"], capture_output=True, env=ENV, timeout=120)
    r = rs("start")
    assert r.returncode == 0, r.stderr[-2000:]
    r = py(
        f"""
        import json, ray
        from raysched.client import connect
        from raysched.settings import Settings
        ray.init(address="auto", namespace="driver", log_to_driver=False)
        s = Settings()
        h = ray.get_actor(s.actor_name, namespace=s.namespace)
        rec = ray.get(h.start.remote())["recovery"]
        c = connect(start=False, settings=s)
        infos = c.wait({ids!r}, timeout=180)
        print(json.dumps({{"recovery": rec, "states": [i.state.value for i in infos]}}))
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["recovery"]["live"] > 0, out["recovery"]  # work was still queued at the stop
    assert out["states"] == ["succeeded"] * 200
    assert rs("stop").returncode == 0
