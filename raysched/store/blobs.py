"""Large payloads and results. The value is served from Ray's object store, and a durable copy
lives under ``<store root>/blobs`` so that it survives what the object store does not (the death
of the object's owner, a whole-cluster restart). The journal, snapshots and results store hold only
a small descriptor, ``{"$raysched_blob": NAME, "bytes": N}``, in place of the value.

Who writes what: the scheduler writes a large payload's blob before it acknowledges the submission
and puts the payload in the object store, where the worker fetches it (from the blob after a
scheduler restart). A worker writes a large result's blob before it reports the task done; the
scheduler puts the blob's bytes in the object store the first time a client asks, and the client
decodes them (the scheduler never does). Ray 2.56 removed ``ray.put(_owner=...)``, so a worker
cannot hand an object it creates over to the scheduler: an object the worker owned would die with
it. Workers therefore need to reach the state directory (one node, a shared file system, ``s3://``
or ``gs://``); a worker that cannot sends the result inline, as for small ones. No Ray import: the
object-store side is injected where Ray lives (``raysched.runtime.factory``)."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from typing import Any

import pyarrow.fs as pafs

from raysched.models import BLOB_KEY
from raysched.store.journal import dumps, loads
from raysched.store.location import StateDir

__all__ = ["BLOB_KEY", "PAYLOAD", "RESULT", "BlobStore", "is_blob", "plain", "tag"]

# BLOB_KEY, the descriptor's key, is reserved in payloads (models.TaskSpec refuses it); a handler
# result shaped like a descriptor would be taken for one.
FOLDER = "blobs"


def is_blob(value: Any) -> bool:
    """True for a blob descriptor (what stands in for a large value in records)."""
    return type(value) is dict and len(value) == 2 and BLOB_KEY in value and "bytes" in value


PAYLOAD, RESULT = "p", "r"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# "." never occurs in a tag, nor in the names of the first blob version ("<id>-<hex>.json"), so
# the sweep cannot mistake those for its own
_NAME = re.compile(r"([pr])\.([A-Za-z0-9_=-]+)\.([0-9a-f]{32})\.json")


def plain(task_id: str) -> bool:
    """Whether ``task_id`` is its own tag."""
    return _SAFE_ID.fullmatch(task_id) is not None


def tag(task_id: str) -> str:
    """The task id as it appears in blob names: itself when it is short and plain, else ``=``
    and a hash (``=`` never occurs in a plain id, so two ids never share a tag in practice)."""
    if plain(task_id):
        return task_id
    return "=" + hashlib.sha256(task_id.encode()).hexdigest()[:32]


def _name(desc: dict[str, Any]) -> str:
    name = str(desc[BLOB_KEY])
    if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".json"):
        raise ValueError(f"not a blob name: {name!r}")
    return name


class BlobStore:
    """Blob files under ``<root>/blobs``, one per value, written atomically (temporary name,
    fsync, rename; an object-store upload on ``s3://``/``gs://``). ``max_inline``: values whose
    JSON is longer go to a blob; None writes none (blobs written before can still be read)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | StateDir,
        max_inline: int | None,
        filesystem: Any = None,
        *,
        sync: str = "always",
    ) -> None:
        self.dir = root if isinstance(root, StateDir) else StateDir(root, filesystem)
        self.max_inline = max_inline
        #: ``always``: every write is fsynced; ``everysec``: writes skip their fsyncs and
        #: ``sync_pending`` (the journal's syncer calls it) makes them durable about once a second;
        #: ``off``: the kernel writes them back.
        self.sync = sync
        self._unsynced: list[str] = []
        self._lock = threading.Lock()
        self._made = False

    def encode_if_large(self, value: Any) -> bytes | None:
        """The JSON of ``value`` when it is too long to keep inline, else None."""
        if self.max_inline is None or value is None or isinstance(value, (bool, int, float)):
            return None
        data = dumps(value)
        return data if len(data) > self.max_inline else None

    def write(self, data: bytes, task_id: str, kind: str = PAYLOAD) -> dict[str, Any]:
        """Write ``data`` durably under a new name; returns its descriptor. The name holds the
        kind (payload or result) and the task id (``tag``), for ``sweep``; names never repeat,
        so a redone task writes a new file and the descriptor the journal recorded first keeps
        pointing at its own."""
        return self.write_many([(data, task_id)], kind)[0]

    def write_many(
        self, items: list[tuple[bytes, str]], kind: str = PAYLOAD
    ) -> list[dict[str, Any]]:
        """``write`` for several values, with one directory fsync for all of them."""
        if kind not in (PAYLOAD, RESULT):
            raise ValueError(f"blob kind must be {PAYLOAD!r} or {RESULT!r}")
        if not self._made:
            self.dir.makedirs(FOLDER)
            self._made = True
        named = [(f"{kind}.{tag(tid)}.{uuid.uuid4().hex}.json", data) for data, tid in items]
        self.dir.write_many_atomic(FOLDER, named, fsync=self.sync == "always")
        if self.sync == "everysec" and self.dir.local:
            with self._lock:
                self._unsynced.extend(name for name, _ in named)
        return [{BLOB_KEY: name, "bytes": len(data)} for name, data in named]

    def sync_pending(self) -> None:
        """fsync what was written with a deferred sync (any thread)."""
        with self._lock:
            names, self._unsynced = self._unsynced, []
        try:
            self.dir.fsync_files(FOLDER, names)
        except BaseException:
            with self._lock:
                self._unsynced[:0] = names
            raise

    def read(self, desc: dict[str, Any]) -> Any:
        """The value a descriptor stands for (``FileNotFoundError`` if its file is gone)."""
        return loads(self.read_bytes(desc))

    def read_bytes(self, desc: dict[str, Any]) -> bytes:
        """The JSON a descriptor stands for."""
        return self.dir.read_bytes(FOLDER, _name(desc))

    def delete(self, desc: dict[str, Any]) -> None:
        self.dir.delete(FOLDER, _name(desc))

    def names(self) -> list[str]:
        return [n for n in self.dir.listdir(FOLDER) if not n.startswith("tmp-")]

    def exists(self) -> bool:
        """Whether any blob was ever written here (one stat, no listing)."""
        info = self.dir.fs.get_file_info(self.dir.path(FOLDER))
        return bool(info.type == pafs.FileType.Directory)

    def old_files(self, min_age_s: float, now: float) -> list[tuple[str, str, str]]:
        """``(name, kind, tag)`` of the blob files older than ``min_age_s`` (the candidates of an
        orphan sweep; files this module did not name are never listed)."""
        sel = pafs.FileSelector(self.dir.path(FOLDER), allow_not_found=True, recursive=False)
        out = []
        for info in self.dir.fs.get_file_info(sel):
            m = _NAME.fullmatch(info.base_name)
            mtime = info.mtime
            if m is not None and mtime is not None and now - mtime.timestamp() >= min_age_s:
                out.append((info.base_name, m.group(1), m.group(2)))
        return out

    def delete_names(self, names: list[str]) -> int:
        """Delete blob files by name (those already gone count too)."""
        for name in names:
            self.dir.delete(FOLDER, _name({BLOB_KEY: name}))
        return len(names)
