"""Fast unit tests (no I/O) of the key format, principals and the idempotency hash: the
tests scripts/mutation.sh runs against its mutants, with tests/domain/test_rules.py."""

from __future__ import annotations

import asyncio
import hashlib
import math

import orjson
import pytest

from app.api.idempotency import _KEY_RE, request_hash
from app.domain.keys import KEY_RE, KeyCache, Principal, generate_key, hash_key, key_hint
from app.realtime.hub import HEARTBEAT, Event, Subscriber, encode, frame

BODY = b'{"b": 1, "a": [1, 2]}'


@pytest.mark.parametrize(("kind", "mode"), [("secret", "test"), ("public", "live")])
def test_generated_keys_have_the_documented_shape_and_differ(kind: str, mode: str) -> None:
    keys = {generate_key(kind, mode) for _ in range(50)}
    assert len(keys) == 50
    prefix = {"secret": "sk", "public": "pk"}[kind]
    for key in keys:
        assert KEY_RE.match(key), key
        assert key.startswith(f"{prefix}_{mode}_") and len(key) == len(prefix) + len(mode) + 34
    bodies = "".join(k[-32:] for k in keys)
    assert set(bodies) - set("0123456789") and any(c.isupper() for c in bodies)
    assert any(c.islower() for c in bodies) and any(c.isdigit() for c in bodies)


@pytest.mark.parametrize(
    "key",
    [
        "sk_test_" + "a" * 31,
        "sk_test_" + "a" * 33,
        "xk_test_" + "a" * 32,
        "sk_prod_" + "a" * 32,
        "sk_test_" + "a" * 31 + "-",
        " sk_test_" + "a" * 32,
        "sktest_" + "a" * 32,
    ],
)
def test_malformed_keys_do_not_match(key: str) -> None:
    assert KEY_RE.match(key) is None


def test_key_pattern_groups() -> None:
    match = KEY_RE.match("pk_live_" + "Ab1" * 10 + "zz")
    assert match is not None and match.groups() == ("pk", "live", "Ab1" * 10 + "zz")


def test_hash_and_hint() -> None:
    key = "sk_test_" + "Q" * 28 + "wxyz"
    assert hash_key(key) == hashlib.sha256(key.encode()).digest()
    assert key_hint(key) == "sk_test_...wxyz"


def test_principal_rights() -> None:
    secret = Principal("k", "app", "test", "secret")
    public = Principal("k", "app", "test", "public")
    token = Principal("k", "app", "test", "token", user_id="u", job_ids=frozenset({"J"}))
    assert (secret.can_write, public.can_write, token.can_write) == (True, False, False)
    assert (secret.is_token, public.is_token, token.is_token) == (False, False, True)
    assert secret.sees_user("anyone") and public.sees_job("anyone", "X", None)
    assert token.sees_user("u") and not token.sees_user("v")
    assert token.sees_job("u", "J", None) and token.sees_job("u", "C", "J")
    assert not token.sees_job("u", "X", None) and not token.sees_job("u", "X", "Y")
    assert not token.sees_job("v", "J", None)
    user_token = Principal("k", "app", "test", "token", user_id="u")
    assert user_token.sees_job("u", "X", None) and not user_token.sees_job("v", "X", None)
    assert secret.token_only is False and secret.expires_at is None


def test_request_hash_is_sha256_of_method_path_and_canonical_json() -> None:
    canonical = orjson.dumps(orjson.loads(BODY), option=orjson.OPT_SORT_KEYS)
    expected = hashlib.sha256(b"POST\n/v1/jobs\n" + canonical).digest()
    assert request_hash("POST", "/v1/jobs", BODY) == expected
    assert request_hash("POST", "/v1/jobs", b'{"a":[1,2],"b":1}') == expected
    assert request_hash("POST", "/v1/jobs", b"") == hashlib.sha256(b"POST\n/v1/jobs\n").digest()
    assert request_hash("POST", "/v1/jobs", b"  \n") == request_hash("POST", "/v1/jobs", b"")
    assert request_hash("POST", "/v1/jobs/x", BODY) != expected
    assert request_hash("PUT", "/v1/jobs", BODY) != expected
    assert request_hash("POST", "/v1/jobs", b'{"a":[2,1],"b":1}') != expected


@pytest.mark.parametrize(
    ("key", "valid"),
    [("a", True), ("x" * 255, True), ("x" * 256, False), ("", False), ("a b~!", True)]
    + [("caf\u00e9", False), ("a\tb", False), ("a\x7f", False)],
)
def test_idempotency_key_alphabet(key: str, valid: bool) -> None:
    assert bool(_KEY_RE.fullmatch(key)) is valid


def test_encode_and_heartbeat() -> None:
    assert encode(7, "job.progress", '{"a":1}') == b'id: 7\nevent: job.progress\ndata: {"a":1}\n\n'
    assert encode(None, "job.sync", "{}") == b"event: job.sync\ndata: {}\n\n"
    assert encode(0, "connected", "{}").startswith(b"id: 0\n")
    assert HEARTBEAT == b"event: heartbeat\ndata: {}\n\n"


def test_a_subscriber_narrowed_to_a_job_wants_it_and_its_children_after_its_floor() -> None:
    sub = Subscriber(stream_id=1, floor=5, job_id="P", maxsize=10)
    assert not sub.wants(5, "P", None) and not sub.wants(4, "P", None)
    assert sub.wants(6, "P", None) and sub.wants(6, "C", "P")
    assert not sub.wants(6, "C", "Q") and not sub.wants(6, "C", None)
    every = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=10)
    assert every.wants(1, "X", None) and not every.wants(0, "X", None)
    assert sub.deadline == math.inf


async def test_a_full_subscriber_buffer_is_dropped_once_and_rearmed() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=2, max_bytes=100)
    assert sub.empty()
    sub.offer(1, b"a")
    sub.offer(2, b"bb")
    assert (sub.size, sub.overflowed) == (3, False)
    sub.offer(3, b"c")  # full: dropped, the stream re-reads the log
    assert (sub.overflowed, sub.empty(), sub.size) == (True, True, 0)
    sub.offer(4, b"d")  # ignored until rearmed
    assert sub.empty()
    sub.rearm()
    sub.offer(5, b"e")
    assert (sub.overflowed, sub.pop(), sub.size) == (False, (5, b"e"), 0)
    sub.offer(6, b"x" * 99)
    sub.offer(7, b"y")  # exactly max_bytes: still taken
    assert not sub.overflowed and sub.size == 100
    sub.offer(8, b"z")  # over max_bytes
    assert sub.overflowed and sub.empty()


async def test_the_byte_limit_alone_drops_a_buffer_far_from_its_count_limit() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=10, max_bytes=100)
    sub.offer(1, b"a" * 60)
    sub.offer(2, b"b" * 50)  # 110 bytes in 2 of 10 places: over the byte limit
    assert sub.overflowed and sub.empty() and sub.size == 0


async def test_goodbyes_and_heartbeats() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    sub.beat()
    assert sub.beat_due
    sub.beat_due = False
    sub.offer(1, b"x")
    sub.beat()  # messages waiting keep the line alive
    assert not sub.beat_due
    assert sub.pop() == (1, b"x")
    sub.expire()
    sub.stop()  # the first goodbye stands
    assert sub.reason == "maxLifetime"
    sub.beat()  # no heartbeat while closing
    assert not sub.beat_due
    other = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    other.stop()
    assert other.reason == "shutdown"


async def test_a_waiting_subscriber_is_woken_by_each_offer_goodbye_and_beat() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    for seq in (1, 2):
        waiting = asyncio.create_task(sub.wait())
        await asyncio.sleep(0)  # it now waits on an empty buffer
        assert not waiting.done()
        sub.offer(seq, b"x")
        await asyncio.wait_for(waiting, 10)
        assert sub.pop() == (seq, b"x")
    sub.offer(3, b"y")  # with nobody waiting any more
    assert sub.pop() == (3, b"y")
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    sub.beat()
    await asyncio.wait_for(waiting, 10)
    sub.beat_due = False
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    sub.close("replaced")
    await asyncio.wait_for(waiting, 10)
    assert sub.reason == "replaced"
    await asyncio.wait_for(sub.wait(), 10)  # nothing to wait for once closing


class _FakeWire:
    """A connection that records what is written to it (``Subscriber.deliver``'s target)."""

    def __init__(self) -> None:
        self.open = True
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return self.open

    def write(self, chunks: bytes) -> None:
        self.writes.append(chunks)


def _events(*seqs: int) -> list[Event]:
    return [Event(s, "J", None, f"id: {s}\n\n".encode()) for s in seqs]


async def test_a_waiting_stream_gets_every_new_event_in_one_write_each_its_own_chunk() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    wire = _FakeWire()
    sub.wire = wire
    waiting = asyncio.create_task(sub.wait(direct=True))
    await asyncio.sleep(0)
    assert sub.idle
    events = _events(1, 2)
    assert sub.deliver(events, None, 5.0) == 2
    assert wire.writes == [b"7\r\nid: 1\n\n\r\n7\r\nid: 2\n\n\r\n"]  # two chunks, one write
    assert (sub.sent, sub.last_event, sub.empty(), waiting.done()) == (2, 5.0, True, False)
    assert sub.deliver(_events(2), None, 6.0) == 0  # never twice: queued, the task skips it
    await asyncio.wait_for(waiting, 10)
    assert not sub.idle and sub.pop() == (2, b"id: 2\n\n")
    assert frame(b"abc") == b"3\r\nabc\r\n"


async def test_a_direct_write_of_several_events_moves_sent_to_the_last() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    sub.wire = _FakeWire()
    waiting = asyncio.create_task(sub.wait(direct=True))
    await asyncio.sleep(0)
    assert sub.deliver(_events(1, 2, 3), None, 1.0) == 3
    assert sub.sent == 3
    sub.stop()
    await asyncio.wait_for(waiting, 10)


async def test_a_stream_that_waits_without_direct_gets_everything_through_its_buffer() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    sub.wire = _FakeWire()
    waiting = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not sub.idle and sub.deliver(_events(1), None, 1.0) == 0
    await asyncio.wait_for(waiting, 10)
    assert sub.pop() == (1, b"id: 1\n\n") and sub.wire.writes == []


async def test_a_stream_under_back_pressure_or_busy_gets_events_through_its_buffer() -> None:
    sub = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    wire = _FakeWire()
    sub.wire = wire
    assert sub.deliver(_events(1), None, 1.0) == 0  # not waiting (busy): queued
    assert sub.pop() == (1, b"id: 1\n\n") and wire.writes == []
    waiting = asyncio.create_task(sub.wait(direct=True))
    await asyncio.sleep(0)
    wire.open = False  # the client stopped reading
    assert sub.deliver(_events(2, 3), None, 1.0) == 0
    assert not sub.idle and wire.writes == []
    await asyncio.wait_for(waiting, 10)
    wire.open = True
    # Woken, it has messages queued: later events queue behind them, in order.
    assert sub.deliver(_events(4), None, 1.0) == 0
    assert [sub.pop()[0] for _ in range(3)] == [2, 3, 4] and wire.writes == []
    # Without a wire (another server), a waiting stream is never written to directly.
    plain = Subscriber(stream_id=1, floor=0, job_id=None, maxsize=5)
    waiting = asyncio.create_task(plain.wait(direct=True))
    await asyncio.sleep(0)
    assert not plain.idle and plain.deliver(_events(1), None, 1.0) == 0
    await asyncio.wait_for(waiting, 10)


def test_the_key_cache_keeps_a_lookup_for_its_ttl_and_stays_bounded() -> None:
    import time

    alice = Principal("k1", "app", "test", "secret")
    cache = KeyCache(ttl=600, max_entries=2)
    assert cache.get(b"a") == (False, None)
    cache.put(b"a", alice)
    cache.put(b"unknown", None)  # a miss is cached too
    assert cache.get(b"a") == (True, alice) and cache.get(b"unknown") == (True, None)
    cache.put(b"c", alice)  # full: emptied first, then stored
    assert cache.get(b"a") == (False, None) and cache.get(b"c") == (True, alice)
    cache._entries[b"old"] = (time.monotonic() - 1, alice)  # its ttl has passed
    assert cache.get(b"old") == (False, None)
    off = KeyCache(ttl=0)
    off.put(b"a", alice)
    assert off.get(b"a") == (False, None) and off._entries == {}


def test_the_key_cache_keeps_a_lookup_through_its_last_instant_and_any_positive_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from app.domain import keys

    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(keys, "time", SimpleNamespace(monotonic=lambda: clock.now))
    alice = Principal("k1", "app", "test", "secret")
    cache = KeyCache(ttl=5)
    cache.put(b"a", alice)
    clock.now = 1005.0  # exactly its ttl later: still a hit
    assert cache.get(b"a") == (True, alice)
    clock.now = 1005.001
    assert cache.get(b"a") == (False, None)
    # A ttl below a second is a short cache, not an off switch.
    short = KeyCache(ttl=0.5)
    short.put(b"a", alice)
    assert short.get(b"a") == (True, alice)
    clock.now += 0.6
    assert short.get(b"a") == (False, None)


def test_the_key_cache_holds_ten_thousand_keys_by_default() -> None:
    alice = Principal("k1", "app", "test", "secret")
    cache = KeyCache(ttl=600)
    for n in range(10_000):
        cache.put(n.to_bytes(4, "big"), alice)
    assert cache.get((0).to_bytes(4, "big")) == (True, alice)
    cache.put(b"one more", alice)  # full: emptied first, then stored
    assert cache.get((0).to_bytes(4, "big")) == (False, None)
    assert cache.get(b"one more") == (True, alice)
