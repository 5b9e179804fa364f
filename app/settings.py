"""Every setting of the server, read from environment variables (prefix ``SEENN_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server configuration. Each field is the environment variable ``SEENN_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SEENN_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SEENN_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL URL. Unset: an embedded PostgreSQL is started in data_dir.",
    )
    listen_database_url: str | None = Field(
        default=None,
        description="Direct (non-PgBouncer) URL for the LISTEN connection; defaults to "
        "database_url.",
    )
    data_dir: Path = Field(default=Path(".seenn"), description="Embedded PostgreSQL data folder.")
    embedded_pg_user: str = Field(
        default="",
        description="Run as root without database_url: the system user the embedded PostgreSQL "
        "runs as (created if missing, announced when created); empty: refuse to start as root.",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `serve` listens on.")
    forwarded_allow_ips: str = Field(
        default="127.0.0.1", description="Proxies trusted for X-Forwarded-* headers (comma list)."
    )
    cors_allow_origins: str = Field(
        default="",
        description="Browser origins allowed to call the API (comma list, or *); empty: no "
        "CORS headers (native apps and servers need none).",
    )
    graceful_shutdown_seconds: int = Field(
        default=10,
        ge=0,
        description="On SIGTERM, how long requests in flight may take to finish before they "
        "are cancelled.",
    )
    keep_alive_seconds: int = Field(
        default=75,
        ge=1,
        description="Idle HTTP keep-alive; longer than a load balancer's upstream idle timeout.",
    )

    db_pool_size: int = Field(
        default=20,
        ge=1,
        description="Pooled database connections kept per replica (open while in use, then "
        "kept: sized to the requests in flight at once).",
    )
    db_max_overflow: int = Field(
        default=0,
        ge=0,
        description="Extra connections a replica may open above the pool under load; each "
        "closes on return, so a busy replica keeps reconnecting (0: requests queue instead).",
    )
    db_pool_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="How long a request queues for a free connection before it gets 503 "
        "SERVER_BUSY with Retry-After (SERVICE_UNAVAILABLE during an outage).",
    )
    db_prepared_statements: bool = Field(
        default=True,
        description="Keep statements prepared on the server's sessions; false behind a "
        "transaction-mode pooler without prepared statement support (PgBouncer before 1.21).",
    )
    db_statement_timeout_ms: int = Field(
        default=15000,
        ge=0,
        description="PostgreSQL statement_timeout for the server's sessions; 0 leaves the "
        "database's own.",
    )

    auth_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a replica caches an API key lookup (a revocation takes at most "
        "this long to apply); 0 disables.",
    )
    token_lifetime_seconds: int = Field(
        default=900,
        ge=1,
        le=7 * 24 * 3600,
        description="Lifetime of a subscriber token from POST /v1/tokens, and the most a "
        "request may ask for (expiresIn).",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted; larger gets 413."
    )

    rate_limit_enabled: bool = Field(
        default=True,
        description="Request rate limits (per secret key; per install for public keys).",
    )
    rate_limit_per_second: float = Field(
        default=100.0,
        gt=0,
        description="Sustained requests per second per budget (a secret key, or one install "
        "of a public key), per replica.",
    )
    rate_limit_burst: int = Field(
        default=2000,
        ge=1,
        description="Requests a key may send at once; covers an SDK createBatch of 1,000 children.",
    )
    sse_max_connections_per_key: int = Field(
        default=10_000,
        ge=1,
        description="Open SSE streams per API key per replica (a public key is shared by every "
        "install of an app); more get 429.",
    )
    sse_max_connections_per_user: int = Field(
        default=10,
        ge=1,
        description="Open SSE streams per API key and userId per replica; a new one closes "
        "the oldest with `connection.idle` (reason `replaced`).",
    )
    idempotency_retention_hours: float = Field(
        default=24.0, gt=0, description="How long an Idempotency-Key and its response are kept."
    )
    sweep_interval_seconds: float = Field(
        default=60.0, ge=0, description="Seconds between sweeps of expired data; 0 disables."
    )
    sweep_batch_size: int = Field(
        default=500, ge=1, description="Rows deleted per statement by the sweeper."
    )

    sse_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between `heartbeat` events on an SSE stream."
    )
    sse_max_connection_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Maximum life of an SSE stream; it ends with `connection.idle` and the "
        "client reconnects (spreads load across replicas).",
    )
    sse_token_expiry_margin_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A stream opened with a subscriber token gets `connection.idle` (reason "
        "`token_expired`) this long before the token expires (at most half its "
        "remaining life), to reconnect with a new token and lastEventId.",
    )
    sse_poll_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Fallback read of the event log when no notification arrives.",
    )
    sse_client_buffer: int = Field(
        default=1000,
        ge=1,
        description="Live events queued for one slow SSE client; beyond it the stream reads "
        "what the client missed from the event log as the client reads.",
    )
    sse_client_buffer_bytes: int = Field(
        default=262_144,
        ge=8192,
        description="Bytes of live events queued for one slow SSE client; beyond it the "
        "stream reads what the client missed from the event log as the client reads.",
    )
    sse_max_event_bytes: int = Field(
        default=7680,
        ge=1024,
        description="Largest SSE message: a job event that would be larger leaves out "
        "`result.data`, then `metadata`, then `error.details`, and lists them in `omitted`. "
        "At most the smallest read of your clients (8 KiB on Android).",
    )
    sse_send_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A write to an SSE client that makes no progress for this long cuts the "
        "stream (a client that stopped reading).",
    )
    sse_direct_writes: bool = Field(
        default=True,
        description="Let the realtime hub write live events straight to a waiting stream's "
        "connection (uvicorn's HTTP/1.1 connection); off, every message goes through the "
        "ASGI `send` of the stream's own task (slower with many subscribers).",
    )
    sse_retry_ms: int = Field(
        default=3000,
        ge=0,
        description="The `retry:` hint sent on connect: how long browser `EventSource` waits "
        "before it reconnects.",
    )
    sse_sync_limit: int = Field(
        default=1000,
        ge=1,
        description="Most `job.sync` events sent on connect: the job named by `jobId` and "
        "every parent first, then the user's newest other jobs, in creation order.",
    )
    sse_sync_finished_hours: float | None = Field(
        default=None,
        ge=0,
        description="A connect without a usable `lastEventId` also syncs jobs that ended "
        "within this many hours; unset: `SEENN_EVENT_RETENTION_HOURS`.",
    )
    sse_max_replay_events: int = Field(
        default=10_000,
        ge=1,
        description="Most events replayed on a resume; a client further behind gets `job.sync` "
        "of the current state instead (as for an id older than the retention).",
    )
    event_retention_hours: float = Field(
        default=24.0,
        gt=0,
        description="How long events are kept for SSE resume; older ids get `job.sync`.",
    )

    dashboard_session_hours: float = Field(
        default=12.0,
        gt=0,
        description="How long a dashboard sign-in lasts before the browser must sign in again.",
    )

    apns_key: str | None = Field(
        default=None,
        description="APNs token-signing key (.p8): its file path, or its PEM contents. Unset "
        "(with the other APNS settings): devices are stored, pushes are not sent.",
    )
    apns_key_id: str | None = Field(default=None, description="The .p8 key's Key ID (10 chars).")
    apns_team_id: str | None = Field(default=None, description="The Apple developer Team ID.")
    apns_bundle_id: str | None = Field(
        default=None, description="The app's bundle id: the APNs topic of its pushes."
    )
    apns_environment: Literal["production", "sandbox"] = Field(
        default="production",
        description="APNs environment: production (App Store, TestFlight) or sandbox "
        "(development builds from Xcode).",
    )
    apns_url: str | None = Field(
        default=None,
        description="APNs base URL; unset: Apple's host for apns_environment.",
    )
    apns_ca_file: Path | None = Field(
        default=None,
        description="CA certificates trusted for the APNs connection; unset: the system's.",
    )
    push_poll_interval_seconds: float = Field(
        default=0.25, gt=0, description="How often the delivery worker looks for due pushes."
    )
    push_batch_size: int = Field(
        default=100, ge=1, description="Most pushes one worker claims and sends at once."
    )
    push_max_attempts: int = Field(
        default=8, ge=1, description="Attempts of a push before it is given up as failed."
    )
    push_retry_base_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay; doubles per attempt (with jitter)."
    )
    push_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest delay between two attempts of a push."
    )
    push_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a claimed push stays with its replica; a replica that died "
        "mid-send loses it to another after this.",
    )
    push_retention_hours: float = Field(
        default=24.0, gt=0, description="How long sent, failed and skipped pushes are kept."
    )
    live_activity_dismiss_seconds: int = Field(
        default=300,
        ge=0,
        description="How long an ended Live Activity stays on the lock screen (its "
        "dismissal-date).",
    )

    log_level: str = Field(
        default="info",
        description="Least severe level logged: critical, error, warning, info (one access line "
        "per request), debug or trace.",
    )
    log_json: bool = Field(
        default=True, description="One JSON object per log line; false: plain text lines."
    )
    shutdown_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        description="On SIGTERM, keep serving this long with /readyz failing (so load balancers "
        "stop routing here) before SSE streams are closed and new connections refused.",
    )

    @property
    def sync_finished_window_hours(self) -> float:
        """How far back a fresh connect syncs jobs that ended (default: the retention)."""
        if self.sse_sync_finished_hours is None:
            return self.event_retention_hours
        return self.sse_sync_finished_hours


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
