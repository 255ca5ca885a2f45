"""Tokens, the tokens file and the per-tenant rate limiter of the HTTP front (no Ray)."""

from __future__ import annotations

import hmac
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raysched.cli import app as cli
from raysched.errors import ValidationFailed
from raysched.http.auth import Principal, TokenStore, create_token, hash_secret
from raysched.http.quota import RateLimiter
from raysched.settings import Settings


def test_tokens_file_holds_only_salted_hashes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    t1, r1 = TokenStore.add(path, "acme")
    t2, r2 = TokenStore.add(path, "ops", admin=True)
    text = path.read_text()
    for tok in (t1, t2):
        secret = tok.split("_", 2)[2]
        assert tok not in text and secret not in text
    recs = json.loads(text)["tokens"]
    assert [r["tenant"] for r in recs] == ["acme", "ops"]
    assert set(recs[0]) == {"id", "tenant", "admin", "salt", "hash", "created_at"}
    assert r1.salt != r2.salt  # a salt per token
    assert r1.hash == hash_secret(r1.salt, t1.split("_", 2)[2])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_right_token_authenticates_wrong_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tok, rec = TokenStore.add(path, "acme")
    adm, _ = TokenStore.add(path, "ops", admin=True)
    store = TokenStore.load(path)
    assert store.authenticate(tok) == Principal("acme", False, rec.id)
    p = store.authenticate(adm)
    assert p is not None and p.admin and p.tenant == "ops"
    prefix, tid, secret = tok.split("_", 2)
    wrong_secret = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (
        f"{prefix}_{tid}_{wrong_secret}",  # right id, wrong secret
        f"{prefix}_{'0' * 16}_{secret}",  # unknown id
        f"xx_{tid}_{secret}",  # wrong prefix
        f"{prefix}_{tid}",  # no secret
        f"{prefix}_{tid}_",  # empty secret
        f"{prefix}_{tid}_{'a' * 10_000}",  # absurdly long
        "",
        "Bearer " + tok,
        tok + " ",
    ):
        assert store.authenticate(bad) is None, bad


def test_comparison_is_constant_time_for_wrong_and_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok, rec = create_token("acme")
    store = TokenStore([rec])
    seen: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        seen.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth.py calls through
    _, tid, secret = tok.split("_", 2)
    assert store.authenticate(tok) is not None
    assert store.authenticate(f"rs_{tid}_{secret}x") is None
    assert store.authenticate(f"rs_{'f' * 16}_{secret}") is None  # unknown id: a dummy compare
    assert len(seen) == 3
    assert all(len(a) == len(b) == 64 for a, b in seen)


def test_store_rereads_the_file_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    now = [0.0]
    store = TokenStore(path=path, reload_s=1.0, clock=lambda: now[0])
    tok, _ = TokenStore.add(path, "late")
    now[0] = 5.0
    assert store.authenticate(tok) == Principal("late", False, tok.split("_")[1])
    # a broken file keeps the tokens already known
    good = path.read_text()
    path.write_text("{not json")
    now[0] = 10.0
    assert store.authenticate(tok) is not None
    # a token removed from the file stops working
    raw = json.loads(good)
    raw["tokens"] = []
    path.write_text(json.dumps(raw))
    now[0] = 20.0
    assert store.authenticate(tok) is None


def test_missing_file_is_empty_and_broken_file_is_refused(tmp_path: Path) -> None:
    assert TokenStore.read(tmp_path / "absent.json") == []
    bad = tmp_path / "bad.json"
    bad.write_text('{"tokens": [{"id": "x"}]}')
    with pytest.raises(ValidationFailed):
        TokenStore.read(bad)


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 200, "../etc", "ü"])
def test_tenant_names_are_checked(tenant: str) -> None:
    with pytest.raises(ValidationFailed):
        create_token(tenant)


def test_cli_token_create_prints_the_token_once(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    res = CliRunner().invoke(
        cli, ["token", "create", "--tenant", "acme", "--admin", "--tokens-file", str(path)]
    )
    assert res.exit_code == 0, res.output
    tok = res.stdout.strip().splitlines()[-1]
    assert tok.startswith("rs_")
    assert tok not in path.read_text()
    p = TokenStore.load(path).authenticate(tok)
    assert p is not None and p.tenant == "acme" and p.admin
    bad = CliRunner().invoke(
        cli, ["token", "create", "--tenant", "a b", "--tokens-file", str(path)]
    )
    assert bad.exit_code == 2


def test_unauthenticated_mode_is_loopback_only() -> None:
    assert Settings(http={"auth": False}).http.host == "127.0.0.1"
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        Settings(http={"auth": False, "host": "0.0.0.0"})


def test_rate_limiter_bucket_with_debt() -> None:
    now = [0.0]
    rl = RateLimiter(10, burst=5, clock=lambda: now[0])
    assert all(rl.take("a") is None for _ in range(5))
    wait = rl.take("a")
    assert wait is not None and wait == pytest.approx(0.1)
    assert rl.take("b") is None  # buckets are per tenant
    now[0] = 0.1
    assert rl.take("a") is None
    # a batch larger than the burst goes through on a full bucket, then pays its debt
    now[0] = 10.0
    assert rl.take("a", 25) is None
    wait = rl.take("a")
    assert wait is not None and wait == pytest.approx(2.1)
    now[0] = 12.1
    assert rl.take("a") is None
