"""The journal: an append-only log of the scheduler's state changes, with group commit.

Layout. The journal is a directory of numbered segment files (``0000000007.journal``). Each write is
one *frame*: a 10-byte header (magic ``RJ``, payload length, CRC32 of the payload, little-endian)
and a payload that is a JSON array of the records of one group commit. A frame is the unit of
atomicity: a crash mid-write leaves a frame whose length runs past the end of the file or whose
CRC does not match, and ``replay`` stops reading that segment there with one warning, keeping
every frame before it. No acknowledged append can be in a torn frame, since an append returns only
once its frame was written.

Group commit. ``append_nowait`` encodes the records in the caller's thread and queues them; one
writer thread takes everything queued since its last write and writes it as one frame with one
``write`` (and, under ``always``, one ``fsync``). Callers that arrive while a write or an fsync is
in progress therefore share the next one. ``append_many`` (threads) and ``append`` (asyncio) wait
for their frame. Under ``everysec`` and ``off`` an append that finds the writer idle and nothing
queued writes its frame itself (a ``write`` to the page cache takes well under a millisecond),
without a hand-off to the writer thread and back.

Sync policies, as Redis's ``appendfsync``:

- ``always``: an append returns after its frame was written *and* fsynced. A crash of the process
  or of the machine loses no acknowledged record.
- ``everysec`` (default): an append returns after ``write`` handed its frame to the operating
  system; a background thread fsyncs at most once a second. A crash of the process loses nothing
  acknowledged; a crash of the machine (power, kernel) loses up to the last second or two of
  acknowledged records.
- ``off``: as ``everysec``, but the journal never fsyncs and leaves flushing to the operating
  system (about every 30 s on Linux). A process crash loses nothing acknowledged; a machine crash
  loses whatever the kernel had not written back yet.

Segments and checkpoints. ``rotate`` starts a new segment and returns its number: everything
appended before the call is in lower segments. A checkpoint rotates, snapshots the state, and once
the snapshot is durable calls ``drop_before`` to delete the segments it covers.

One writer per directory: the first write takes an exclusive ``flock`` on ``LOCK`` (released by
``close`` or by the kernel when the process dies), so a second scheduler cannot interleave frames.

The journal is always a local directory, written with plain file I/O and ``os.fsync``, even when
snapshots and results go to object storage (``s3://``, ``gs://``): object stores cannot append or
fsync. On a cluster where the scheduler may restart on another node, put the journal on a volume
that node also mounts, or accept losing the changes since the last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

__all__ = [
    "Journal",
    "JournalClosed",
    "JournalLocked",
    "JournalStats",
    "ReplayStats",
    "SyncPolicy",
    "encode_record",
]

log = logging.getLogger("raysched.store.journal")

SyncPolicy = Literal["always", "everysec", "off"]
SYNC_POLICIES: tuple[str, ...] = get_args(SyncPolicy)

_HEADER = struct.Struct("<2sII")  # magic, payload length, crc32(payload)
_MAGIC = b"RJ"
_MAX_FRAME = 1 << 31
_SUFFIX = ".journal"


class JournalClosed(RuntimeError):
    """An append after ``close``, or a journal whose writer failed for good."""


class JournalLocked(RuntimeError):
    """Another live process (or Journal object) is writing this journal directory."""


def _default(o: Any) -> Any:
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "backslashreplace")
    return repr(o)


_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_default, allow_nan=False
)
# orjson is ~7x faster than the standard library on records (the journal is on the submit path);
# the standard library remains the fallback for what orjson refuses (huge ints, deep nesting).
# Non-string keys (a user's payload or result) take a second try: orjson's option for them
# makes every dict slower (about 25% of a journal row).
_OPTS = orjson.OPT_NON_STR_KEYS


def _orjson(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_default)
    except TypeError:
        return orjson.dumps(obj, default=_default, option=_OPTS)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON of ``obj``; values JSON cannot hold become their ``repr`` (NaN and
    infinities become null)."""
    try:
        return _orjson(obj)
    except (TypeError, ValueError, RecursionError):
        return _encoder.encode(_sanitize(obj)).encode("utf-8")


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def _sanitize(v: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: keys become strings, cycles and very deep nesting become ``repr``,
    NaN and infinities ``None`` (as orjson writes them: the standard library would write
    ``NaN``, which no strict JSON reader, orjson included, reads back)."""
    if depth > 64:
        return repr(v)[:1000]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _sanitize(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_sanitize(x, depth + 1) for x in v]
    return v


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Compact JSON of one record. The journal never refuses a record: values JSON cannot hold
    are stored as their ``repr``, non-string keys as strings, cycles as ``repr``."""
    return dumps(record)


@dataclass
class JournalStats:
    """What the writer did: frames written (one ``write`` each), fsyncs, records (task changes:
    a record with ``n`` counts as ``n``) and bytes."""

    writes: int = 0
    syncs: int = 0
    records: int = 0
    bytes: int = 0


@dataclass
class ReplayStats:
    segments: int = 0
    frames: int = 0
    records: int = 0
    bytes: int = 0
    #: One line per segment whose tail was torn or corrupt (what, where, how much was skipped).
    damaged: list[str] = field(default_factory=list)


@dataclass
class _Append:
    data: bytes  # a JSON array of ``count`` records
    count: int
    future: Future[None] | None


@dataclass
class _Tick:
    """The async appends made during one turn of an event loop: they become one queue entry."""

    future: asyncio.Future[None]
    chunks: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass
class _Rotate:
    segment: int


def _count(batch: list[Any]) -> int:
    """Task changes in a batch of records: a record that holds several (the recorder's ``rows``
    record) says how many in ``n``."""
    return sum(r.get("n", 1) if isinstance(r, dict) else 1 for r in batch)


def _fsync_dir(path: Path, fsync: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


#: What an empty ``append_nowait`` returns when nothing before it is left to write.
_WRITTEN: Future[None] = Future()
_WRITTEN.set_result(None)


def settle_future(src: Future[None], dst: asyncio.Future[None]) -> None:
    """Copy a thread future's outcome onto an asyncio future (both the journal and recorder do)."""
    if dst.done():
        return
    exc = src.exception()
    if exc is None:
        dst.set_result(None)
    else:
        dst.set_exception(exc)


def _resolve(fut: Future[None] | None, exc: BaseException | None = None) -> None:
    if fut is None:
        return
    try:
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
    except InvalidStateError:  # the waiter gave up (cancelled); the frame is written anyway
        pass


class Journal:
    """An append-only, segmented, CRC-framed log with group commit (see the module docstring).

    ``fsync`` is injectable (tests count or slow it down); ``sync_interval_s`` is the everysec
    period. ``first_segment`` is the lowest number a new segment may take: recovery passes the
    segment its snapshot covers up to, so numbers never go back below it."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        sync: SyncPolicy = "everysec",
        first_segment: int = 0,
        fsync: Callable[[int], None] = os.fsync,
        sync_interval_s: float = 1.0,
    ) -> None:
        if sync not in SYNC_POLICIES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_POLICIES)}, not {sync!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sync_policy: SyncPolicy = sync
        self.stats = JournalStats()
        self.replay_stats = ReplayStats()
        self._fsync = fsync
        self._interval = sync_interval_s
        existing = self.segments()
        #: The segment that appends made from now on go to (rotate moves it on).
        self._segment = max(existing[-1] + 1 if existing else 0, first_segment)
        self._cond = threading.Condition()
        self._queue: list[_Append | _Rotate] = []
        self._ticks: dict[asyncio.AbstractEventLoop, _Tick] = {}
        self._lock_fd: int | None = None
        self._closing = False
        self._failed: BaseException | None = None
        self._writer: threading.Thread | None = None
        self._busy = False  # the writer holds items taken from the queue (guarded by _cond)
        #: Appends write their own frame when nothing is queued (see the module docstring).
        self._inline = sync != "always"
        self._syncer: threading.Thread | None = None
        self._stop_syncer = threading.Event()
        #: Called before each ``everysec`` fsync of the journal, at a segment switch and at close
        #: (blob files written without their own fsync ride the journal's; see ``blobs``).
        self.sync_hooks: list[Callable[[], None]] = []
        # Writer-thread state; ``_fd_lock`` guards the descriptor against the syncer.
        self._fd_lock = threading.Lock()
        self._fd: int | None = None
        self._fd_segment = self._segment
        self._size = 0
        self._dirty = False

    # -- paths ----------------------------------------------------------------------------------
    def path_of(self, segment: int) -> Path:
        return self.directory / f"{segment:010d}{_SUFFIX}"

    def segments(self) -> list[int]:
        """Numbers of the segment files present, ascending."""
        out = []
        for p in self.directory.iterdir():
            if p.name.endswith(_SUFFIX) and p.name[: -len(_SUFFIX)].isdigit():
                out.append(int(p.name[: -len(_SUFFIX)]))
        return sorted(out)

    @property
    def segment(self) -> int:
        """The segment that the next append goes to."""
        return self._segment

    # -- appending ------------------------------------------------------------------------------
    @staticmethod
    def _encode(records: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
        batch = records if isinstance(records, list) else list(records)
        if not batch:
            return b"[]", 0
        n = _count(batch)
        try:
            return _orjson(batch), n
        except (TypeError, ValueError, RecursionError):  # one odd record: fix it alone
            return b"[" + b",".join(encode_record(r) for r in batch) + b"]", n

    def _lock(self) -> None:  # holds self._cond
        """One writer per directory: an exclusive ``flock`` on ``LOCK``, taken at the first
        write and held until ``close`` (the kernel drops it if the process dies)."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not a POSIX system: no lock
            pass
        except OSError as exc:
            os.close(fd)
            raise JournalLocked(
                f"journal {self.directory} is being written by another process or Journal"
            ) from exc
        self._lock_fd = fd

    def _enqueue(self, items: list[_Append]) -> None:
        with self._cond:
            if self._closing or self._failed is not None:
                raise JournalClosed(f"journal {self.directory} is closed") from self._failed
            self._lock()
            self._ensure_threads()
            if self._idle():
                # in order: nothing is queued or being written. Holding _cond keeps it so.
                self._commit(items)
                return
            self._queue.extend(items)
            self._cond.notify()

    def _idle(self) -> bool:  # holds self._cond
        """An append may write its frame itself: ``everysec``/``off``, nothing queued or being
        written."""
        return self._inline and not self._queue and not self._busy

    def append_nowait(self, records: Iterable[Mapping[str, Any]]) -> Future[None]:
        """Queue ``records`` for the next group commit; the future resolves once their frame is
        written (and fsynced under ``always``). An empty batch is a barrier: it resolves once
        everything queued before it is written. Records are encoded here, in the caller."""
        data, n = self._encode(records)
        if not n:
            with self._cond:
                if self._idle() and not self._closing and self._failed is None:
                    return _WRITTEN  # nothing earlier is queued or being written
        fut: Future[None] = Future()
        self._enqueue([_Append(data, n, fut)])
        return fut

    def append_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append and block until written per the sync policy (from any thread but an event
        loop's: there use ``append``)."""
        self.append_nowait(records).result()

    async def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append and wait, without blocking the event loop, until written per the sync policy.
        The appends of one turn of the loop are handed to the writer together (one wake-up, one
        future), and the writer batches whatever arrives while it writes: group commit."""
        data, n = self._encode(records)
        if self._closing or self._failed is not None:
            raise JournalClosed(f"journal {self.directory} is closed") from self._failed
        loop = asyncio.get_running_loop()
        tick = self._ticks.get(loop)
        if tick is None:
            tick = self._ticks[loop] = _Tick(loop.create_future())
            loop.call_soon(self._flush_tick, loop)
        if n:
            tick.chunks.append((data, n))
        await asyncio.shield(tick.future)

    def _flush_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        tick = self._ticks.pop(loop)
        fut: Future[None] = Future()
        chunks = tick.chunks or [(b"[]", 0)]
        items = [_Append(d, n, None) for d, n in chunks[:-1]]
        items.append(_Append(chunks[-1][0], chunks[-1][1], fut))
        try:
            self._enqueue(items)  # one lock round: the writer puts them in one group commit
        except BaseException as exc:
            tick.future.set_exception(exc)
            return
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(settle_future, f, tick.future))

    def rotate(self) -> int:
        """Start a new segment for every append queued after this call; returns its number."""
        with self._cond:
            if self._closing:
                raise JournalClosed(f"journal {self.directory} is closed")
            self._lock()
            self._segment += 1
            n = self._segment
            self._queue.append(_Rotate(n))
            self._ensure_threads()
            self._cond.notify()
        return n

    def flush(self) -> None:
        """Block until everything queued is written, then fsync it whatever the policy."""
        self.append_many(())
        with self._fd_lock:
            if self._fd is not None:
                self._fsync(self._fd)
                self.stats.syncs += 1
                self._dirty = False

    def drop_before(self, segment: int) -> list[int]:
        """Delete the segments numbered below ``segment`` (never the one being written)."""
        with self._cond:
            limit = min(segment, self._fd_segment, self._segment)
        gone = []
        for n in self.segments():
            if n >= limit:
                break
            try:
                self.path_of(n).unlink()
                gone.append(n)
            except FileNotFoundError:
                pass
        if gone and self.sync_policy != "off":
            _fsync_dir(self.directory, self._fsync)
        return gone

    def close(self) -> None:
        """Write what is queued, fsync (unless ``off``) and stop the threads. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._stop_syncer.set()
        if self._writer is not None:
            self._writer.join()
        if self._syncer is not None:
            self._syncer.join()
        self._run_sync_hooks()
        with self._fd_lock:
            if self._fd is not None:
                if self.sync_policy != "off" and self._dirty:
                    self._fsync(self._fd)
                    self.stats.syncs += 1
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer -----------------------------------------------------------------------------
    def _ensure_threads(self) -> None:  # holds self._cond
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="raysched-journal", daemon=True
            )
            self._writer.start()
        if self._syncer is None and self.sync_policy == "everysec":
            self._syncer = threading.Thread(
                target=self._sync_loop, name="raysched-journal-fsync", daemon=True
            )
            self._syncer.start()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                items, self._queue = self._queue, []
                if not items and self._closing:
                    return
                self._busy = True
            try:
                group: list[_Append] = []
                for it in items:
                    if isinstance(it, _Append):
                        group.append(it)
                    else:
                        self._commit(group)
                        group = []
                        self._switch(it.segment)
                self._commit(group)
            finally:
                with self._cond:
                    self._busy = False

    def _open(self) -> int:
        if self._fd is None:
            path = self.path_of(self._fd_segment)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if new and self.sync_policy != "off":
                _fsync_dir(self.directory, self._fsync)
            with self._fd_lock:
                self._fd = fd
                self._size = os.fstat(fd).st_size
        return self._fd

    def _commit(self, group: list[_Append]) -> None:
        futs = [a.future for a in group]
        full = [a for a in group if a.count]
        count = sum(a.count for a in full)
        if full:
            if len(full) == 1:
                payload = full[0].data
            else:  # splice the JSON arrays into one
                payload = b"[" + b",".join(memoryview(a.data)[1:-1] for a in full) + b"]"
            frame = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
            try:
                fd = self._open()
                view = memoryview(frame)
                while view:
                    view = view[os.write(fd, view) :]
                if self.sync_policy == "always":
                    self._fsync(fd)
                    self.stats.syncs += 1
                else:
                    self._dirty = True
            except OSError as exc:
                self._undo(exc)
                for f in futs:
                    _resolve(f, exc)
                return
            self._size += len(frame)
            self.stats.writes += 1
            self.stats.records += count
            self.stats.bytes += len(frame)
        for f in futs:
            _resolve(f)

    def _undo(self, exc: OSError) -> None:
        """A failed write may have left part of a frame: cut the file back to its last frame so
        later frames stay readable. If even that fails, refuse further appends."""
        log.error("journal write failed: %s", exc)
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc2:
            log.error("journal %s cannot be repaired (%s); refusing appends", self.directory, exc2)
            with self._cond:
                self._failed = exc2

    def _switch(self, segment: int) -> None:
        self._run_sync_hooks()  # a snapshot taken at this switch may name those files
        with self._fd_lock:
            if self._fd is not None:
                if self.sync_policy != "off" and self._dirty:
                    self._fsync(self._fd)
                    self.stats.syncs += 1
                os.close(self._fd)
                self._fd = None
                self._dirty = False
            self._fd_segment = segment
        try:
            self._open()  # created now, so the segment a snapshot names always exists
        except OSError as exc:  # pragma: no cover - reported again by the next append
            log.error("journal cannot open segment %d: %s", segment, exc)

    def _run_sync_hooks(self) -> None:
        for hook in self.sync_hooks:
            try:
                hook()
            except Exception as exc:  # pragma: no cover - disk trouble; the next tick retries
                log.error("journal sync hook failed: %s", exc)

    def _sync_loop(self) -> None:
        while not self._stop_syncer.wait(self._interval):
            self._run_sync_hooks()
            with self._fd_lock:
                if self._fd is not None and self._dirty:
                    self._dirty = False
                    try:
                        self._fsync(self._fd)
                        self.stats.syncs += 1
                    except OSError as exc:  # pragma: no cover - disk trouble; keep trying
                        self._dirty = True
                        log.error("journal fsync failed: %s", exc)

    # -- reading --------------------------------------------------------------------------------
    def replay(self, start_segment: int = 0) -> Iterator[dict[str, Any]]:
        """Every record of segments ``>= start_segment`` in order. A torn or corrupt frame ends
        its segment's replay with one warning (``replay_stats.damaged``); later segments, written
        after a restart, are still read."""
        for batch in self.replay_batches(start_segment):
            yield from batch

    def replay_batches(
        self, start_segment: int = 0, stop_segment: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """As ``replay``, one list per frame (one group commit): the fast path for recovery.
        ``stop_segment``: read only the segments below it."""
        self.replay_stats = st = ReplayStats()
        for n in self.segments():
            if n < start_segment:
                continue
            if stop_segment is not None and n >= stop_segment:
                break
            st.segments += 1
            yield from self._read_segment(n, st)

    def _read_segment(self, n: int, st: ReplayStats) -> Iterator[list[dict[str, Any]]]:
        path = self.path_of(n)
        try:
            f = path.open("rb")
        except FileNotFoundError:  # dropped meanwhile
            return
        with f:
            total = os.fstat(f.fileno()).st_size
            pos = 0
            problem = ""
            while pos < total:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    problem = "torn frame header"
                    break
                magic, length, crc = _HEADER.unpack(head)
                if magic != _MAGIC or length > _MAX_FRAME:
                    problem = "corrupt frame header"
                    break
                payload = f.read(length)
                if len(payload) < length:
                    problem = f"torn frame ({len(payload)} of {length} bytes)"
                    break
                if zlib.crc32(payload) != crc:
                    problem = "CRC mismatch"
                    break
                try:
                    batch = orjson.loads(payload)
                except ValueError:
                    problem = "undecodable frame"
                    break
                if not isinstance(batch, list):
                    problem = "frame is not a record list"
                    break
                pos += _HEADER.size + length
                st.frames += 1
                st.records += _count(batch)
                st.bytes += _HEADER.size + length
                yield batch
        if problem:
            line = (
                f"journal {path}: {problem} at byte {pos} of {total}; skipped the last "
                f"{total - pos} bytes of this segment (records before it are kept)"
            )
            st.damaged.append(line)
            log.warning(line)
