"""Settings: one pydantic model, read at start-up from YAML and the environment (``RAYSCHED_``
prefix, ``__`` between nested names, e.g. ``RAYSCHED_POLICY__POLICY=fcfs``), then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from raysched.errors import ValidationFailed
from raysched.models import DEFAULT_TIERS, MAX_PAYLOAD_BYTES
from raysched.policy.levels import LevelSchedule
from raysched.policy.queues import Policy
from raysched.policy.scoring import PROFILES, CostModel, Weights

__all__ = [
    "HTTPSettings",
    "MLFQSettings",
    "PolicySettings",
    "PoolSettings",
    "ScorerSettings",
    "Settings",
    "StoreSettings",
]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class MLFQSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    levels: int = Field(default=16, ge=1, le=32)
    base_quantum: float = Field(default=0.05, gt=0)
    ratio: float = Field(default=2.0, ge=1)
    unit: Literal["seconds", "steps"] = "seconds"
    starvation_s: float = Field(default=15.0, gt=0)
    #: A task with a ``size_hint`` enters the level where a task of that size would finish.
    hint_join: bool = True
    #: A task without a hint (any task, with ``hint_join`` off) gets a first quantum that covers
    #: the Gittins slice learned from finished tasks of its tier (``policy/sizes.py``).
    learn_first_slice: bool = True

    def schedule(self) -> LevelSchedule:
        return LevelSchedule(self.levels, self.base_quantum, self.ratio, self.unit)


class ScorerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: Literal["responsive", "throughput", "balanced", "custom"] = "throughput"
    weights: dict[str, float] | None = None
    age_horizon_s: float = Field(default=60.0, gt=0)
    urgency_horizon_s: float = Field(default=60.0, gt=0)
    size_scale_s: float = Field(default=1.0, gt=0)

    def resolved(self) -> Weights:
        if self.profile == "custom":
            if not self.weights:
                raise ValidationFailed("scorer profile 'custom' needs weights")
            try:
                return Weights(**self.weights)
            except TypeError as exc:
                raise ValidationFailed(f"bad scorer weights: {exc}") from exc
        return PROFILES[self.profile]


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Policy = Policy.MLFQ
    mlfq: MLFQSettings = Field(default_factory=MLFQSettings)
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)
    tiers: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    max_queued: int = Field(default=1_000_000, ge=1)
    max_queued_per_tenant: int | None = Field(default=None, ge=1)
    prefill_s_per_token: float = Field(default=0.0002, ge=0)
    decode_s_per_token: float = Field(default=0.01, ge=0)
    #: Charge a recompute (prompt + generated tokens at the prefill rate) when a paused task
    #: resumes on a worker that does not hold its state.
    recompute_on_migrate: bool = True
    rescore_interval_s: float = Field(default=5.0, gt=0)
    max_redeliveries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=0.2, ge=0)
    retry_backoff_max_s: float = Field(default=30.0, ge=0)

    @field_validator("tenant_weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, float]) -> dict[str, float]:
        # Fair-share counters grow by service / weight and must only grow.
        bad = {t: w for t, w in v.items() if not w > 0}
        if bad:
            raise ValueError(f"tenant weights must be > 0: {bad}")
        return v

    def cost(self) -> CostModel:
        return CostModel(
            self.prefill_s_per_token, self.decode_s_per_token, self.recompute_on_migrate
        )


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory: int | None = Field(default=None, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    slots: int = Field(default=1, ge=1, le=4096)
    min_workers: int = Field(default=1, ge=0)
    max_workers: int = Field(default=4, ge=1)
    #: Handler names this pool runs; "*" also takes every import path and unlisted name.
    handlers: list[str] = Field(default_factory=lambda: ["*"])
    scale_up_wait_s: float = Field(default=0.5, ge=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    #: Paused (preempted) generators a worker keeps; past that a resumed task recomputes.
    max_paused: int = Field(default=4, ge=0)
    #: GPU memory (MiB) each worker may place task requests (``gpu_memory_mb``) against when NVML
    #: cannot say; with NVML the worker's reported free memory is used.
    gpu_memory_mb: int | None = Field(default=None, ge=0)

    @field_validator("max_workers")
    @classmethod
    def _ge_min(cls, v: int, info: Any) -> int:
        lo = info.data.get("min_workers", 0)
        if v < lo:
            raise ValueError(f"max_workers ({v}) < min_workers ({lo})")
        return v


class HTTPSettings(BaseModel):
    """The Serve ingress (CONTRACT.md section 4)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = Field(default="raysched", min_length=1)
    route_prefix: str = "/"
    num_replicas: int = Field(default=1, ge=1, le=1000)
    #: The ingress only waits on the scheduler, so by default it reserves no CPU.
    replica_num_cpus: float = Field(default=0.0, ge=0)
    #: Serve's default (5) would queue long polls and event streams behind each other.
    max_ongoing_requests: int = Field(default=1000, ge=1)
    #: False is the local unauthenticated mode: every request is tenant "default" with the admin
    #: role, so it binds to 127.0.0.1 only.
    auth: bool = True
    #: JSON file of salted token hashes (``raysched token create``); default
    #: ``<state_dir>/tokens.json``.
    tokens_file: str | None = None
    max_body_bytes: int = Field(default=4 << 20, ge=1024)
    max_payload_bytes: int = Field(default=MAX_PAYLOAD_BYTES, ge=2, le=MAX_PAYLOAD_BYTES)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    #: Per-tenant submission rate (tasks/s) enforced in each ingress replica: with N replicas the
    #: cluster-wide ceiling is N times this. None: no rate limit (the queued-task quota,
    #: ``policy.max_queued_per_tenant``, still applies in the scheduler).
    submissions_per_s: float | None = Field(default=None, gt=0)
    #: Tasks a tenant may submit at once above the rate (default: one second's worth).
    submissions_burst: int | None = Field(default=None, ge=1)
    #: Longest ``GET /v1/tasks/{id}/result?wait=S`` honoured.
    max_wait_s: float = Field(default=60.0, gt=0)
    #: How often an event stream asks the scheduler for news when no step output arrives.
    events_poll_s: float = Field(default=0.5, gt=0)
    #: An event stream closes after this long; the client resumes with ``Last-Event-ID``.
    events_max_s: float = Field(default=3600.0, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)
    #: Deadline of one call to the scheduler actor (long polls add their own wait).
    call_timeout_s: float = Field(default=30.0, gt=0)
    #: How long a request retries while the scheduler actor restarts before answering 503.
    unavailable_retry_s: float = Field(default=3.0, ge=0)

    @model_validator(mode="after")
    def _local_only_without_auth(self) -> HTTPSettings:
        if not self.auth and self.host not in _LOOPBACK:
            raise ValueError(
                f"http.auth=false (local unauthenticated mode) binds to 127.0.0.1 only, "
                f"not {self.host!r}"
            )
        return self


class StoreSettings(BaseModel):
    """Durability (``raysched.store``): the journal, checkpoints and the results store live under
    ``<state_dir>/<namespace>/<actor_name>``, so schedulers that share a state directory keep
    apart and a restarted one finds its own state."""

    model_config = ConfigDict(extra="forbid")

    #: False keeps the queue in memory only (a restart forgets it): replays, benchmarks' baseline.
    enabled: bool = True
    #: Redis AOF semantics (README, "Delivery"): what a crash of the machine can lose.
    sync: Literal["always", "everysec", "off"] = "everysec"
    #: Changes that need no acknowledgement (a task started, progressed or ended) reach the
    #: journal within this time; a process crash can lose them (the task then runs again:
    #: at-least-once). Submissions and cancels are journaled before they are acknowledged, and
    #: outcomes before ``result``/``wait`` return them.
    flush_interval_s: float = Field(default=0.02, ge=0, le=1.0)
    #: Journal a start only once the task has run this long: a task that ends sooner costs one
    #: journal row less (its outcome row says everything; about a quarter of the journal's
    #: bytes for short tasks). After a crash of the scheduler's process, recovery asks the
    #: workers the old instance left which attempts they were given, and counts those the
    #: journal lacks; only a start on a worker that died too (its node went down with the
    #: scheduler) within this window (plus a flush) goes uncounted, and that task runs again with
    #: the attempt not counted. 0 journals every start at the next flush.
    hold_starts_s: float = Field(default=0.05, ge=0, le=60.0)
    #: A local folder for the journal; default ``<store root>/journal`` (required when
    #: ``state_dir`` is ``s3://`` or ``gs://``: object stores cannot append or fsync).
    journal_dir: str | None = None
    #: A checkpoint is taken this often, or sooner once the journal has grown by
    #: ``checkpoint_journal_mb`` since the last one.
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    checkpoint_journal_mb: float = Field(default=64.0, gt=0)
    keep_snapshots: int = Field(default=2, ge=1)
    #: How often the outcomes journaled since the last time go to the results files (they are
    #: in the journal from the moment the task ends): the scheduler closes a journal segment and
    #: a converter actor on its node makes a results file from the closed segments.
    results_flush_s: float = Field(default=2.0, gt=0)
    #: Load finished tasks back into the scheduler on recovery, so ``result``/``status`` and
    #: idempotency keys of finished tasks survive a restart.
    restore_finished: bool = True
    #: Payloads and results whose JSON is longer than this many bytes live in Ray's object store,
    #: with a durable copy under ``<store root>/blobs``; records hold a small descriptor instead
    #: (``raysched.store.blobs``). Workers must reach the state directory for large results (else
    #: they send them inline). None writes no new blobs (those already written stay readable).
    inline_max_bytes: int | None = Field(default=64 * 1024, ge=256)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAYSCHED_", env_nested_delimiter="__", extra="forbid"
    )

    namespace: str = "raysched"
    actor_name: str = "raysched-scheduler"
    state_dir: str = "./.raysched"
    policy: PolicySettings = Field(default_factory=PolicySettings)
    pools: list[PoolSettings] = Field(default_factory=lambda: [PoolSettings()])
    #: Extra handler names: name -> "pkg.module:function". Built-ins: echo, simulate.
    handlers: dict[str, str] = Field(default_factory=dict)
    tick_s: float = Field(default=0.05, gt=0)
    #: How long a worker may take to stop a cancelled or timed-out task before it is replaced.
    stop_grace_s: float = Field(default=5.0, gt=0)
    #: Step outputs kept per task for streaming.
    max_stream_items: int = Field(default=100_000, ge=0)
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)

    def store_root(self) -> str:
        """Where this scheduler's durable state lives (a local path or a URI)."""
        base = self.state_dir.rstrip("/")
        if "://" in base and not base.startswith("file://"):
            return f"{base}/{self.namespace}/{self.actor_name}"
        return str(Path(base) / self.namespace / self.actor_name)

    def resolved(self) -> Settings:
        """A copy with local paths made absolute, for processes with another working directory
        (the scheduler actor, Serve replicas)."""
        upd: dict[str, Any] = {}
        if "://" not in self.state_dir:
            upd["state_dir"] = str(Path(self.state_dir).expanduser().resolve())
        if self.store.journal_dir is not None:
            jd = str(Path(self.store.journal_dir).expanduser().resolve())
            upd["store"] = self.store.model_copy(update={"journal_dir": jd})
        return self.model_copy(update=upd) if upd else self

    def tokens_path(self) -> Path:
        """The HTTP tokens file, absolute (Serve replicas do not share the CLI's cwd)."""
        p = Path(self.http.tokens_file or Path(self.state_dir) / "tokens.json")
        return p.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the YAML file, which arrives as init arguments.
        return env_settings, init_settings

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise ValidationFailed(f"cannot read config {path}: {exc}") from exc
            if loaded is not None and not isinstance(loaded, dict):
                raise ValidationFailed(f"config {path} must be a mapping")
            data.update(loaded or {})
        data.update(overrides)
        return cls(**data)
