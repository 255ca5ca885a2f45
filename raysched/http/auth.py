"""Bearer tokens for the HTTP front. The tokens file holds only salted hashes; a token is shown
once, when it is created.

A token is ``rs_<id>_<secret>``: the id finds the record without trying every hash, the secret is
32 random bytes. With that much entropy a single salted SHA-256 is enough (a slow password hash
protects guessable secrets, which these are not), and it keeps authentication to microseconds.
Comparison is constant-time (``hmac.compare_digest``), and an unknown id is compared against a
dummy hash so that a miss costs the same as a wrong secret."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raysched.errors import ValidationFailed

__all__ = ["Principal", "TokenRecord", "TokenStore", "create_token", "hash_secret"]

PREFIX = "rs"
_ID_RE = re.compile(r"[0-9a-f]{16}")
_TENANT_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_FILE_VERSION = 1
_MAX_SECRET = 256


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the tenant comes from the token, never from the request body."""

    tenant: str
    admin: bool = False
    token_id: str | None = None

    def may_see(self, tenant: str | None) -> bool:
        return tenant is not None and (self.admin or tenant == self.tenant)


class TokenRecord(BaseModel):
    """One line of the tokens file: no secret, only its salted hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{16}$")
    tenant: str = Field(pattern=_TENANT_RE)
    admin: bool = False
    salt: str = Field(pattern=r"^[0-9a-f]{32}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float = 0.0


def hash_secret(salt_hex: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode()).hexdigest()


def create_token(tenant: str, *, admin: bool = False) -> tuple[str, TokenRecord]:
    """A new token (to show once) and the record to store."""
    salt = secrets.token_hex(16)
    secret = secrets.token_urlsafe(32)
    try:
        rec = TokenRecord(
            id=secrets.token_hex(8),
            tenant=tenant,
            admin=admin,
            salt=salt,
            hash=hash_secret(salt, secret),
            created_at=time.time(),
        )
    except ValidationError:
        raise ValidationFailed(
            f"tenant {tenant!r}: use 1-128 letters, digits, '.', '_' or '-'"
        ) from None
    return f"{PREFIX}_{rec.id}_{secret}", rec


# compared against when the id is unknown, so both failures cost the same
_DUMMY = TokenRecord(id="0" * 16, tenant="x", salt="0" * 32, hash="0" * 64)


class TokenStore:
    """Token records by id. ``path`` makes it re-read the file when it changes (checked at most
    once per ``reload_s``), so tokens created or removed after the ingress started apply without a
    redeploy. Without a readable file the records passed in stay as they are."""

    def __init__(
        self,
        records: Iterable[TokenRecord] = (),
        *,
        path: str | Path | None = None,
        reload_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._by_id = {r.id: r for r in records}
        self.path = None if path is None else Path(path)
        self.reload_s = reload_s
        self._clock = clock
        self._checked = float("-inf")
        self._mtime: float | None = None

    # -- file ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, reload_s: float = 1.0) -> TokenStore:
        store = cls(path=path, reload_s=reload_s)
        store._reload(force=True)
        return store

    @staticmethod
    def read(path: str | Path) -> list[TokenRecord]:
        """Records in the file (none if it does not exist)."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ValidationFailed(f"cannot read tokens file {p}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("tokens"), list):
            raise ValidationFailed(f"tokens file {p}: want {{'version': 1, 'tokens': [...]}}")
        try:
            return [TokenRecord.model_validate(r) for r in raw["tokens"]]
        except ValidationError as exc:
            raise ValidationFailed(f"tokens file {p}: {exc.errors()[0]['msg']}") from None

    @staticmethod
    def add(path: str | Path, tenant: str, *, admin: bool = False) -> tuple[str, TokenRecord]:
        """Create a token and append its record to the file (created 0600 if missing). Returns
        the token, which is stored nowhere."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        token, rec = create_token(tenant, admin=admin)
        with _locked(p):
            recs = TokenStore.read(p)
            recs.append(rec)
            _write_atomic(p, recs)
        return token, rec

    def _reload(self, *, force: bool = False) -> None:
        if self.path is None:
            return
        now = self._clock()
        if not force and now - self._checked < self.reload_s:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return  # keep what we have (e.g. records passed in by the deployer)
        if mtime != self._mtime:
            self._by_id = {r.id: r for r in self.read(self.path)}
            self._mtime = mtime

    # -- lookups -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def records(self) -> list[TokenRecord]:
        return list(self._by_id.values())

    def authenticate(self, token: str) -> Principal | None:
        """The principal for a token, or None for a malformed, unknown or wrong one."""
        parts = token.split("_", 2)
        if (
            len(parts) != 3
            or parts[0] != PREFIX
            or not _ID_RE.fullmatch(parts[1])
            or not 0 < len(parts[2]) <= _MAX_SECRET
        ):
            return None
        tid, secret = parts[1], parts[2]
        try:
            self._reload()  # a stat() at most once per reload_s: new and removed tokens apply
        except ValidationFailed:
            pass  # a broken file: keep the tokens we know
        rec = self._by_id.get(tid)
        known = rec is not None
        rec = rec or _DUMMY
        ok = hmac.compare_digest(hash_secret(rec.salt, secret), rec.hash)
        if not (ok and known):
            return None
        return Principal(rec.tenant, rec.admin, rec.id)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # two `raysched token create` at once must not lose a record
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, recs: list[TokenRecord]) -> None:
    body = json.dumps(
        {"version": _FILE_VERSION, "tokens": [r.model_dump() for r in recs]}, indent=1
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
