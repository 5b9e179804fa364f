"""A local APNs provider API for the tests: HTTP/2 over TLS (hypercorn), checking what Apple
checks, and recording every request it accepts.

Run as ``python -m tests.support.fake_apns --port P --cert C --key K --public-key PUB --team T
--key-id KID --bundle B``. ``POST /3/device/<token>`` answers like APNs: 200 with an
``apns-id``, or an error status with ``{"reason": ...}``. Checked: HTTP/2; the provider
token (ES256 JWT: signature against the public key, ``kid``, ``iss``, ``iat`` within the
hour); the headers ``apns-topic``, ``apns-push-type``, ``apns-priority``,
``apns-expiration``, ``apns-id``; the payload (JSON under 4 KB, ``aps``; for Live
Activities ``event``, ``timestamp``, ``content-state`` with the widget's field types and
``dismissal-date`` on ``end``). A token starting with ``dead`` is unregistered (410).

``GET /_received`` lists accepted requests; ``GET /_rejected`` the refused ones.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import jwt
import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PUSH_TYPES = {"alert", "background", "liveactivity"}
# SeennJobAttributes.ContentState: name -> JSON type its Codable decoding accepts.
CONTENT_STATE = {
    "progress": int,
    "status": str,
    "message": str,
    "stageName": str,
    "stageIndex": int,
    "stageTotal": int,
    "estimatedEndTime": (int, float),
    "resultUrl": str,
    "errorMessage": str,
    "ctaButtonText": str,
    "ctaDeepLink": str,
    "ctaButtonStyle": str,
    "ctaBackgroundColor": str,
    "ctaTextColor": str,
    "ctaCornerRadius": int,
}
REQUIRED_STATE = ("progress", "status")


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_token(header: str | None, public_key: str, team: str, key_id: str) -> None:
    if not header or not header.lower().startswith("bearer "):
        raise Refused(403, "MissingProviderToken")
    token = header.split(" ", 1)[1]
    try:
        head = jwt.get_unverified_header(token)
        claims = jwt.decode(token, public_key, algorithms=["ES256"], options={"require": ["iat"]})
    except jwt.PyJWTError as exc:
        raise Refused(403, "InvalidProviderToken") from exc
    if head.get("alg") != "ES256" or head.get("kid") != key_id or claims.get("iss") != team:
        raise Refused(403, "InvalidProviderToken")
    if not _is_int(claims["iat"]) or time.time() - claims["iat"] > 3600:
        raise Refused(403, "ExpiredProviderToken")


def check_headers(request: Request, bundle: str) -> str:
    push_type = request.headers.get("apns-push-type")
    if push_type not in PUSH_TYPES:
        raise Refused(400, "InvalidPushType")
    topic = request.headers.get("apns-topic")
    expected = f"{bundle}.push-type.liveactivity" if push_type == "liveactivity" else bundle
    if topic != expected:
        raise Refused(400, "DeviceTokenNotForTopic" if topic else "MissingTopic")
    priority = request.headers.get("apns-priority")
    if priority not in ("5", "10") or (push_type == "background" and priority != "5"):
        raise Refused(400, "BadPriority")
    expiration = request.headers.get("apns-expiration", "")
    if not expiration.isdigit() or int(expiration) < time.time():
        raise Refused(400, "BadExpirationDate")
    try:
        uuid.UUID(request.headers.get("apns-id", ""))
    except ValueError as exc:
        raise Refused(400, "BadMessageId") from exc
    return push_type


def check_payload(body: bytes, push_type: str) -> dict[str, Any]:
    if len(body) > 4096:
        raise Refused(413, "PayloadTooLarge")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, "PayloadEmpty") from exc
    aps = payload.get("aps") if isinstance(payload, dict) else None
    if not isinstance(aps, dict):
        raise Refused(400, "PayloadEmpty")
    if push_type == "background" and set(aps) != {"content-available"}:
        raise Refused(400, "BadBackgroundPayload")
    if push_type == "liveactivity":
        if aps.get("event") not in ("update", "end") or not _is_int(aps.get("timestamp")):
            raise Refused(400, "BadLiveActivityEvent")
        state = aps.get("content-state")
        if not isinstance(state, dict) or any(k not in state for k in REQUIRED_STATE):
            raise Refused(400, "BadContentState")
        for name, value in state.items():
            kind = CONTENT_STATE.get(name)
            is_bool = isinstance(value, bool)
            if kind is None or is_bool or not isinstance(value, kind):
                raise Refused(400, f"BadContentState:{name}")
        if aps["event"] == "end" and not _is_int(aps.get("dismissal-date")):
            raise Refused(400, "MissingDismissalDate")
    return payload


def build(args: argparse.Namespace) -> Starlette:
    public_key = open(args.public_key).read()
    received: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []

    async def push(request: Request) -> Response:
        token = request.path_params["token"]
        body = await request.body()
        await asyncio.sleep(args.delay)
        try:
            if request.scope.get("http_version") != "2":
                raise Refused(405, "HTTP2Required")
            check_token(request.headers.get("authorization"), public_key, args.team, args.key_id)
            push_type = check_headers(request, args.bundle)
            payload = check_payload(body, push_type)
            if token.startswith("dead"):
                raise Refused(410, "Unregistered")
        except Refused as refused:
            rejected.append({"token": token, "status": refused.status, "reason": refused.reason})
            return JSONResponse({"reason": refused.reason}, status_code=refused.status)
        received.append(
            {
                "token": token,
                "headers": {k: v for k, v in request.headers.items() if k.startswith("apns-")},
                "payload": payload,
                "peer": list(request.scope.get("client") or ()),
                "at": time.time(),
            }
        )
        return Response(headers={"apns-id": request.headers["apns-id"]})

    async def listing(request: Request) -> Response:
        return JSONResponse(received if request.url.path == "/_received" else rejected)

    return Starlette(
        routes=[
            Route("/3/device/{token}", push, methods=["POST"]),
            Route("/_received", listing),
            Route("/_rejected", listing),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--cert", "--key", "--public-key", "--team", "--key-id", "--bundle"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.certfile, config.keyfile = args.cert, args.key
    config.alpn_protocols = ["h2"]
    config.accesslog = None
    asyncio.run(serve(build(args), config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
