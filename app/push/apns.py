"""Apple Push Notification service: token-based (JWT) authentication over HTTP/2.

The provider token is an ES256 JWT (PyJWT) signed with the team's ``.p8`` key. APNs accepts
one for an hour and refuses a new one more often than every 20 minutes, so a token is
reused for 50 minutes (and renewed early if APNs says it has expired). Requests go over one
HTTP/2 connection (httpx with h2), multiplexed.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from app.settings import Settings

log = logging.getLogger(__name__)

APNS_HOSTS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
TOKEN_REFRESH_SECONDS = 50 * 60  # APNs: valid for an hour, renewed at most every 20 minutes
_SETTINGS = ("apns_key", "apns_key_id", "apns_team_id", "apns_bundle_id")


class ApnsConfigError(ValueError):
    """The APNs settings are incomplete or the key cannot be read."""


@dataclass(frozen=True)
class ApnsConfig:
    key_pem: str
    key_id: str
    team_id: str
    bundle_id: str
    url: str
    ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ApnsConfig | None:
        """The configuration, or None when no APNs setting is set; raises
        :class:`ApnsConfigError` when only some are, or the key is unusable."""
        values = {name: getattr(settings, name) for name in _SETTINGS}
        if not any(values.values()):
            return None
        missing = [f"SEENN_{name.upper()}" for name, value in values.items() if not value]
        if missing:
            raise ApnsConfigError(f"APNs is partly configured: set {', '.join(missing)} too")
        key = _read_key(values["apns_key"])
        return cls(
            key_pem=key,
            key_id=values["apns_key_id"],
            team_id=values["apns_team_id"],
            bundle_id=values["apns_bundle_id"],
            url=(settings.apns_url or APNS_HOSTS[settings.apns_environment]).rstrip("/"),
            ca_file=settings.apns_ca_file,
        )


def _read_key(value: str) -> str:
    """``value`` is the PEM itself or a path to it; check it is an EC private key."""
    pem = value if "-----BEGIN" in value else None
    if pem is None:
        try:
            pem = Path(value).expanduser().read_text()
        except OSError as exc:
            raise ApnsConfigError(f"SEENN_APNS_KEY: cannot read {value}: {exc}") from exc
    try:
        jwt.encode({"iss": "check"}, pem, algorithm="ES256")
    except Exception as exc:  # any failure means the key is unusable
        raise ApnsConfigError(f"SEENN_APNS_KEY is not an ES256 (.p8) private key: {exc}") from exc
    return pem


class ProviderToken:
    """The provider JWT, reused for :data:`TOKEN_REFRESH_SECONDS`."""

    def __init__(self, config: ApnsConfig, clock: Any = time.time) -> None:
        self.config = config
        self.clock = clock
        self._token: str | None = None
        self._issued_at = 0.0

    def current(self) -> str:
        now = self.clock()
        if self._token is None or now - self._issued_at >= TOKEN_REFRESH_SECONDS:
            self._issued_at = now
            self._token = jwt.encode(
                {"iss": self.config.team_id, "iat": int(now)},
                self.config.key_pem,
                algorithm="ES256",
                headers={"kid": self.config.key_id},
            )
        return self._token

    def expire(self) -> None:
        """APNs said the token expired: the next request signs a new one."""
        self._token = None


@dataclass(frozen=True)
class ApnsResponse:
    """APNs' answer: the HTTP status and, on an error, its ``reason``."""

    status: int
    reason: str | None = None


@dataclass(frozen=True)
class Push:
    """One request: the device token, the APNs headers that vary, the payload."""

    token: str
    push_type: str  # liveactivity, alert, background
    priority: int
    expiration: int
    apns_id: str
    payload: dict[str, Any]


class ApnsClient:
    """Sends pushes to APNs over one HTTP/2 connection."""

    def __init__(self, config: ApnsConfig, timeout: float = 10.0) -> None:
        self.config = config
        self.tokens = ProviderToken(config)
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._http = httpx.AsyncClient(
            http2=True, base_url=config.url, verify=verify, timeout=timeout
        )

    def topic(self, push_type: str) -> str:
        if push_type == "liveactivity":
            return f"{self.config.bundle_id}.push-type.liveactivity"
        return self.config.bundle_id

    async def send(self, push: Push) -> ApnsResponse:
        """POST one push; transport errors propagate (the caller retries)."""
        headers = {
            "authorization": f"bearer {self.tokens.current()}",
            "apns-topic": self.topic(push.push_type),
            "apns-push-type": push.push_type,
            "apns-priority": str(push.priority),
            "apns-expiration": str(push.expiration),
            "apns-id": push.apns_id,
        }
        response = await self._http.post(
            f"/3/device/{push.token}", content=orjson.dumps(push.payload), headers=headers
        )
        reason = None
        if response.status_code != 200:
            try:
                reason = str(orjson.loads(response.content).get("reason") or "") or None
            except (orjson.JSONDecodeError, AttributeError):
                reason = None
            if reason == "ExpiredProviderToken":
                self.tokens.expire()
        return ApnsResponse(response.status_code, reason)

    async def aclose(self) -> None:
        await self._http.aclose()
