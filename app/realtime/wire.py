"""The bytes of SSE messages, and the size bound that keeps each one inside a mobile read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

HEARTBEAT = b"event: heartbeat\ndata: {}\n\n"  # no id: a resume must not skip
OMITTED = "omitted"  # the field that lists what an event left out


def encode(seq: int | None, event: str, data: str) -> bytes:
    """One SSE message; ``data`` is a single-line JSON text.

    Lines end in a bare LF: the React Native SDK's parser splits on ``\\n`` and ends a
    message on an empty line, so a CR would leave every line (and the blank one) with a
    trailing ``\\r`` and no event would ever be dispatched.
    """
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


def _drop(path: str) -> Callable[[dict[str, Any]], bool]:
    """Remove ``path`` (``field`` or ``field.sub``) from a payload; True if it was there."""
    head, _, tail = path.partition(".")

    def drop(payload: dict[str, Any]) -> bool:
        if not tail:
            return payload.pop(head, None) is not None
        inner = payload.get(head)
        if not isinstance(inner, dict) or tail not in inner:
            return False
        payload[head] = {k: v for k, v in inner.items() if k != tail}
        return True

    return drop


def _drop_result_extras(payload: dict[str, Any]) -> bool:
    """Keep only ``url`` and ``type`` of the result."""
    result = payload.get("result")
    if not isinstance(result, dict) or set(result) <= {"url", "type"}:
        return False
    payload["result"] = {k: v for k, v in result.items() if k in ("url", "type")}
    return True


# What an oversized event leaves out, in this order; each name is what ``omitted`` lists.
# The first three are the bulky parts; the rest only matter for a job whose other text is
# itself extraordinarily large (``result`` then means "every field but url and type").
SHRINK: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
    ("result.data", _drop("result.data")),
    ("metadata", _drop("metadata")),
    ("error.details", _drop("error.details")),
    ("result", _drop_result_extras),
    ("message", _drop("message")),
    ("stage", _drop("stage")),
    ("queue", _drop("queue")),
    ("error.message", _drop("error.message")),
    ("result.url", _drop("result.url")),
    ("result.type", _drop("result.type")),
    ("workflowId", _drop("workflowId")),
)


def fit(seq: int | None, event: str, data: str, limit: int) -> bytes:
    """``encode``, leaving out the bulky parts of a job payload until the message is at
    most ``limit`` bytes; ``omitted`` then names what is missing (``GET`` the job for it).

    Only an oversized event is parsed, so the common case costs one length check.
    """
    message = encode(seq, event, data)
    if len(message) <= limit:
        return message
    payload = orjson.loads(data)
    if not isinstance(payload, dict):
        return message
    omitted: list[str] = list(payload.get(OMITTED) or ())
    for name, drop in SHRINK:
        if not drop(payload):
            continue
        omitted.append(name)
        payload[OMITTED] = omitted
        message = encode(seq, event, orjson.dumps(payload).decode())
        if len(message) <= limit:
            break
    return message  # the smallest it can be, if still over (the bound is then best effort)


def fit_json(seq: int | None, event: str, payload: Any, limit: int) -> bytes:
    return fit(seq, event, orjson.dumps(payload).decode(), limit)
