"""The policy core, the models, the settings and the virtual replay never import Ray."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import raysched.models, raysched.errors, raysched.settings
import raysched.policy, raysched.policy.core
import raysched.sim, raysched.sim.replay, raysched.sim.trace
from raysched.sim.trace import TraceSpec, generate_trace
from raysched.sim.replay import replay_virtual
from raysched.models import TraceRecord
recs = [TraceRecord.model_validate(r) for r in generate_trace(TraceSpec(tasks=50, seed=1))]
assert replay_virtual(recs, "mlfq").completed == 50
bad = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY_MODULES", bad)
assert not bad, bad
"""


def test_policy_and_sim_do_not_import_ray() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RAY_MODULES []" in proc.stdout
