"""Durability: the journal (local, append-only, group commit), Parquet checkpoints and the results
store (through ``pyarrow.fs``: a local folder or ``s3://``/``gs://``), and recovery. No Ray import.

Recovery = latest snapshot + journal tail (+ results for finished tasks); at-least-once execution,
exactly-once recorded results (deduplicated by task id, first recorded outcome wins)."""

from raysched.store.blobs import BLOB_KEY, BlobStore, is_blob
from raysched.store.checkpoint import Checkpoints, LoadedSnapshot, Snapshot, SnapshotInfo
from raysched.store.journal import (
    Journal,
    JournalClosed,
    JournalLocked,
    JournalStats,
    ReplayStats,
    SyncPolicy,
)
from raysched.store.location import StateDir
from raysched.store.recorder import Recorder
from raysched.store.recovery import RecoveredState, RecoveryReport, recover
from raysched.store.results import ResultsStore, outcome_of

__all__ = [
    "BLOB_KEY",
    "BlobStore",
    "Checkpoints",
    "Journal",
    "JournalClosed",
    "JournalLocked",
    "JournalStats",
    "LoadedSnapshot",
    "Recorder",
    "RecoveredState",
    "RecoveryReport",
    "ReplayStats",
    "ResultsStore",
    "Snapshot",
    "SnapshotInfo",
    "StateDir",
    "SyncPolicy",
    "is_blob",
    "outcome_of",
    "recover",
]
