"""A direct channel from the scheduler to one worker, beside Ray, for the latency-critical commands
(``assign``, ``stop``). A Ray actor call costs milliseconds end to end; one frame on a socket that
both event loops already watch costs a fraction of that. Plain asyncio, no Ray.

- The worker listens on its node's address; ``ChannelServer.start`` returns host, port and a
  random token, which the scheduler learns through the worker's (authenticated) Ray ``ready``
  call. A connection must present the token in its first frame before anything it sends is
  unpickled; otherwise it is closed.
- Frames are a 4-byte big-endian length and a pickle of ``(seq, op, args)``. The worker delivers
  each sequence number once (``Dedup``) and acknowledges what it delivered (8-byte cumulative acks).
- The scheduler keeps unacknowledged frames. When the connection drops, those frames and every later
  one go through the Ray fallback in order (same sequence numbers, so nothing is delivered twice),
  and the channel stays on Ray from then on. One ordered stream carries both ``assign`` and
  ``stop``, so a stop never overtakes the assignment it is about.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import pickle
import secrets
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

__all__ = ["ChannelClient", "ChannelServer", "Dedup"]

log = logging.getLogger("raysched.channel")

_LEN = struct.Struct(">I")
_ACK = struct.Struct(">Q")
_MAX_FRAME = 1 << 30

OnFrame = Callable[[str, Any], None]
Fallback = Callable[[str, int, str, Any], Awaitable[Any]]


class Dedup:
    """Sequence numbers seen, per sender session: a low watermark plus the ones above it."""

    def __init__(self) -> None:
        self._hi: dict[str, int] = {}
        self._above: dict[str, set[int]] = {}

    def first_time(self, session: str, seq: int) -> bool:
        hi = self._hi.get(session, 0)
        above = self._above.get(session)
        if seq <= hi or (above is not None and seq in above):
            return False
        if seq == hi + 1:
            hi = seq
            while above and hi + 1 in above:
                hi += 1
                above.discard(hi)
            self._hi[session] = hi
        else:
            self._above.setdefault(session, set()).add(seq)
        return True


class _ServerConn(asyncio.Protocol):
    def __init__(self, server: ChannelServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.session: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        frames: list[tuple[int, str, Any]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > _MAX_FRAME:
                self._drop("frame too large")
                return
            if n - pos - 4 < size:
                break
            body = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            if self.session is None:
                self.session = self.server.authenticate(body)
                if self.session is None:
                    self._drop("bad token")
                    return
                continue
            frames.append(pickle.loads(body))
        del buf[:pos]
        if not frames or self.session is None:
            return
        # Acknowledge first, deliver last: delivery may wake a handler thread, which then finds
        # the event loop about to go idle instead of still holding the GIL for the ack.
        if self.transport is not None:
            self.transport.write(_ACK.pack(frames[-1][0]))
        for seq, op, args in frames:
            try:
                self.server.deliver(self.session, seq, op, args)
            except Exception:  # pragma: no cover - a command that cannot be applied
                log.exception("channel: frame %d (%s) failed", seq, op)

    def _drop(self, why: str) -> None:
        log.warning("channel: closing a connection (%s)", why)
        self.buf.clear()
        if self.transport is not None:
            self.transport.close()


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover
            pass


class ChannelServer:
    """The worker's end. ``on_frame(op, args)`` runs on the event loop, once per frame."""

    def __init__(self, on_frame: OnFrame) -> None:
        self.on_frame = on_frame
        self.token = secrets.token_hex(32)
        self.dedup = Dedup()
        self._server: asyncio.Server | None = None

    async def start(self, host: str) -> dict[str, Any]:
        """Listen (once) on ``host``; returns what a client needs to connect."""
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _ServerConn(self), host, 0)
        port = self._server.sockets[0].getsockname()[1]
        return {"host": host, "port": port, "token": self.token}

    def authenticate(self, body: bytes) -> str | None:
        """The first frame is ``token:session``; returns the session if the token is right."""
        token, sep, session = body.partition(b":")
        if sep and hmac.compare_digest(token, self.token.encode()):
            return session.decode("ascii", "replace")
        return None

    def deliver(self, session: str, seq: int, op: str, args: Any) -> bool:
        """One frame, from the socket or the Ray fallback; False if it was delivered before."""
        if not self.dedup.first_time(session, seq):
            return False
        self.on_frame(op, args)
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class _ClientConn(asyncio.Protocol):
    def __init__(self, client: ChannelClient) -> None:
        self.client = client
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        k = len(buf) // 8 * 8
        if k:
            (acked,) = _ACK.unpack_from(buf, k - 8)
            del buf[:k]
            self.client._acked(acked)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class ChannelClient:
    """The scheduler's end for one worker. ``send`` returns None when the frame went on the socket,
    else the awaitable of the Ray fallback that carries it."""

    def __init__(self, fallback: Fallback) -> None:
        self.fallback = fallback
        self.session = uuid.uuid4().hex
        self.alive = False
        self._transport: asyncio.Transport | None = None
        self._seq = 0
        self._unacked: dict[int, tuple[str, Any]] = {}  # in sequence order
        self._bg: set[asyncio.Future[None]] = set()
        #: Set when the socket drops (the worker process may have died with its node).
        self.lost = asyncio.Event()

    async def connect(self, info: dict[str, Any], timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _ClientConn(self), info["host"], int(info["port"])),
            timeout,
        )
        self._transport = transport
        self.alive = True
        self._write(f"{info['token']}:{self.session}".encode())

    def _write(self, body: bytes) -> None:
        assert self._transport is not None
        self._transport.write(_LEN.pack(len(body)) + body)

    def send(self, op: str, args: Any) -> Awaitable[Any] | None:
        self._seq += 1
        seq = self._seq
        if self.alive:
            if self._transport is not None and not self._transport.is_closing():
                self._unacked[seq] = (op, args)
                self._write(pickle.dumps((seq, op, args), protocol=pickle.HIGHEST_PROTOCOL))
                return None
            self._lost(None)  # the unacknowledged frames go first, in order
        return self.fallback(self.session, seq, op, args)

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def _acked(self, seq: int) -> None:
        un = self._unacked
        while un:
            first = next(iter(un))
            if first > seq:
                break
            del un[first]

    def _lost(self, exc: Exception | None) -> None:
        if not self.alive:
            return
        self.alive = False
        self.lost.set()
        pending, self._unacked = self._unacked, {}
        if pending:
            log.warning(
                "channel %s lost (%s); resending %d frame(s) through Ray",
                self.session,
                exc,
                len(pending),
            )
        for seq, (op, args) in pending.items():  # in sequence order: submit now, await later
            fut = asyncio.ensure_future(_quiet(self.fallback(self.session, seq, op, args)))
            self._bg.add(fut)
            fut.add_done_callback(self._bg.discard)

    def close(self) -> None:
        self.alive = False
        self._unacked.clear()
        if self._transport is not None:
            self._transport.close()


async def _quiet(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception as exc:
        log.info("channel fallback failed: %s", exc)
