"""Integration tests start one local Ray per module (small num_cpus, logical GPUs) and give each
test its own scheduler name in a namespace of its own, shut down afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import ray

from raysched.client import Client, connect
from raysched.settings import PoolSettings, Settings


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        num_gpus=1,
        namespace=f"raysched-test-{uuid.uuid4().hex[:8]}",
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def make_client(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(pools: list[PoolSettings] | None = None, **kw: object) -> Client:
        kw.setdefault("state_dir", str(tmp_path_factory.mktemp("state")))
        s = Settings(
            namespace=f"raysched-test-{uuid.uuid4().hex[:8]}",
            actor_name=f"sched-{uuid.uuid4().hex[:6]}",
            pools=pools or [PoolSettings(name="default", min_workers=1, max_workers=1)],
            **kw,  # type: ignore[arg-type]
        )
        c = connect(settings=s)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.shutdown()
        except Exception:
            pass


def wait_ready(c: Client, n: int, pool: str = "default", timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.stats()["pools"][pool]["ready_workers"] >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} workers not ready in {timeout}s: {c.stats()['pools']}")
