"""Small pure pieces: keys, time format, URLs, ACL rules, reply bookkeeping (fakeredis)."""

from __future__ import annotations

import re

import fakeredis
import pytest

from worker_manager.commands.replies import ReplyBook
from worker_manager.contract.reply import Reply
from worker_manager.core.clock import iso_from_unix, unix_from_iso
from worker_manager.core.keys import Keys
from worker_manager.core.logs import redact_url
from worker_manager.settings import Settings
from worker_manager.workers.resources.acl import WorkerAcl


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg, arg-type]


def test_keys_follow_the_prefix() -> None:
    keys = Keys("acme")
    assert keys.commands == "acme:commands"
    assert keys.input("w") == "acme:w:input" and keys.output("w") == "acme:w:output"
    assert keys.heartbeat("w") == "acme:w:heartbeat" and keys.worker("w") == "acme:w"
    assert keys.images == "acme:images" and keys.dead == "acme:dead"


def test_time_format_has_milliseconds_and_z() -> None:
    text = iso_from_unix(1795000000.1234)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    assert abs(unix_from_iso(text) - 1795000000.123) < 1e-6


def test_worker_url_replaces_loopback_and_keeps_explicit_urls() -> None:
    derived = settings(redis_url="redis://:pw@127.0.0.1:6400/2").resolved_worker_redis_url()
    assert derived.endswith(":6400/2") and "127.0.0.1" not in derived and ":pw@" in derived
    remote = settings(redis_url="redis://redis.internal:6379/0").resolved_worker_redis_url()
    assert remote == "redis://redis.internal:6379/0"
    explicit = settings(worker_redis_url="redis://gw:1/0").resolved_worker_redis_url()
    assert explicit == "redis://gw:1/0"


def test_acl_rules_grant_only_the_workers_own_keys() -> None:
    s = settings(key_prefix="p", worker_redis_url="redis://:shared@10.0.0.1:6379/0", egress="off")
    acl = WorkerAcl(fakeredis.aioredis.FakeRedis(), s)
    rules = acl.rules("w1")
    assert rules[:2] == ["reset", "on"] and "-@all" in rules
    assert {"%RW~p:w1:input", "%W~p:w1:output", "%W~p:w1:heartbeat"} <= set(rules)
    assert not any(r.startswith("~") or r == "allkeys" or "@all" in r[1:] for r in rules[5:])
    url = acl.worker_url("w1")
    assert (
        url.startswith("redis://p-w1:") and "shared" not in url and url.endswith("@10.0.0.1:6379/0")
    )
    assert acl.password("w1") != acl.password("w2") and len(acl.password("w1")) == 64
    assert WorkerAcl(fakeredis.aioredis.FakeRedis(), s).password("w1") == acl.password("w1")


def test_acl_off_shares_the_url() -> None:
    s = settings(worker_acl=False, worker_redis_url="redis://:shared@10.0.0.1:6379/0", egress="off")
    assert WorkerAcl(fakeredis.aioredis.FakeRedis(), s).worker_url("w") == s.worker_redis_url
    contained = s.model_copy(update={"egress": "on"})
    assert (
        WorkerAcl(fakeredis.aioredis.FakeRedis(), contained).worker_url("w")
        == "unix://:shared@/run/wm/redis.sock?db=0"
    )


def test_redact_url_hides_the_password() -> None:
    assert redact_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


async def test_reply_book_claims_once_and_replays_the_reply() -> None:
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    s = settings(key_prefix="u")
    book = ReplyBook(redis, s)
    await redis.xgroup_create(s.keys.commands, "worker-manager", id="0", mkstream=True)
    first = await book.claim("req", "1-0")
    assert first.owned and first.reply is None
    again = await book.claim("req", "1-0")  # the same entry redelivered after a crash
    assert again.owned
    busy = await book.claim("req", "2-0", wait=0.05)  # a duplicate while the first is in flight
    assert not busy.owned and busy.reply is None
    reply = Reply(request_id="req", command="list", ok=True, workers=[])
    await book.finish("1-0", reply, "u:replies", remember_seconds=60)
    replay = await book.claim("req", "2-0")
    assert replay.reply == reply and not replay.owned
    assert await redis.xlen("u:replies") == 1
    assert 0 < await redis.ttl(s.keys.request("req")) <= 60


@pytest.mark.parametrize("reply_to", [None])
async def test_finish_without_reply_only_acks_and_dead_letters(reply_to: str | None) -> None:
    from worker_manager.commands.replies import DeadLetter

    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    s = settings(key_prefix="u")
    book = ReplyBook(redis, s)
    await book.finish("9-0", None, reply_to, dead=DeadLetter({"command": "x"}, "why", 1))
    [(_id, entry)] = await redis.xrange(s.keys.dead)
    assert entry["command"] == "x" and entry["dead_reason"] == "why"
    assert entry["dead_entry_id"] == "9-0"
