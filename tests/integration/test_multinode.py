"""A node of a multi-node cluster (``ray.cluster_utils.Cluster``: a head and a second node, each its
own raylet) is removed mid-run: the work its workers held is redone elsewhere, every task ends
``succeeded`` exactly once in the results store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from raysched.client import connect
from raysched.settings import PoolSettings, Settings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # head: room for one worker (num_cpus=1); the second node: two more
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    ray.init(address=c.address, namespace=f"raysched-mn-{uuid.uuid4().hex[:6]}")
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_node_removed_mid_run(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    s = Settings(
        namespace=f"raysched-mn-{uuid.uuid4().hex[:6]}",
        state_dir=str(tmp_path),
        pools=[PoolSettings(num_cpus=1, min_workers=3, max_workers=3, slots=4)],
        policy={"max_redeliveries": 10},
    )
    # the scheduler on the head (its journal is on the head's disk); workers anywhere
    c = connect(settings=s)
    deadline = time.monotonic() + 90
    while c.stats()["pools"]["default"]["ready_workers"] < 3:
        assert time.monotonic() < deadline, c.stats()["pools"]
        time.sleep(0.1)
    on_node = {wid for wid, w in c.stats()["workers"].items() if w.get("node_id") == node.node_id}
    assert len(on_node) == 2, "the second node should hold two of the three workers"
    n = 400
    ids = c.submit_batch(
        [
            {"kind": "simulate", "payload": {"output_tokens": 10, "decode_s_per_token": 0.01}}
            for _ in range(n)
        ]
    )
    while c.progress()["completed"] < 60:
        time.sleep(0.05)
    cluster.remove_node(node)
    infos = c.wait(ids, timeout=240)
    left = [(i.id, i.state.value, i.worker) for i in infos if i.state.value != "succeeded"]
    assert not left, (len(left), left[:5], c.stats()["pools"], c.stats()["workers"])
    redone = [i for i in infos if i.attempts > 1]
    assert redone, "the removed node's running work should have been redelivered"
    # the survivors (the head's worker) finished what the lost node had started
    assert {i.worker for i in redone}.isdisjoint(on_node)
    folder = Path(s.store_root()) / "results"
    deadline = time.monotonic() + 30
    while True:
        rows = [
            r
            for f in sorted(folder.glob("part-*.parquet"))
            for r in pq.read_table(f, columns=["id", "state"]).to_pylist()
        ]
        if len(rows) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    c.shutdown()
