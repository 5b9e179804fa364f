"""Table definitions (SQLAlchemy Core). Alembic migrations own the real schema."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

# Reproduce PostgreSQL's own constraint names so migrations stay reviewable.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "%(table_name)s_%(column_0_N_name)s_key",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "pk": "%(table_name)s_pkey",
    }
)

TS = DateTime(timezone=True)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("app_id", String(100), nullable=False),
    Column("mode", String(4), nullable=False),
    Column("kind", String(6), nullable=False),
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("key_hint", String(40), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS),
    CheckConstraint("mode IN ('live', 'test')", name="mode"),
    CheckConstraint("kind IN ('secret', 'public')", name="kind"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("app_id", String(100), nullable=False),
    Column("mode", String(4), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("job_type", String(100), nullable=False),
    Column("title", String(200), nullable=False),
    Column("workflow_id", String(100)),
    Column("status", String(10), nullable=False),
    Column("progress", Integer, nullable=False),
    Column("message", Text),
    Column("metadata", JSONB),
    Column("queue", JSONB),
    Column("stage", JSONB),
    Column("result", JSONB),
    Column("error", JSONB),
    Column("retryable", Boolean),
    Column("estimated_completion_at", TS),
    Column("estimated_duration", Integer),
    Column("eta_confidence", Double),
    Column("eta_based_on", Integer),
    Column("eta_state", JSONB),  # per-job progress milestones for the ETA engine
    Column("parent_job_id", String(26), ForeignKey("jobs.id", ondelete="CASCADE")),
    Column("child_index", Integer),
    Column("total_children", Integer),
    Column("completed_children", Integer),
    Column("failed_children", Integer),
    Column("running_children", Integer),
    Column("cancelled_children", Integer),
    Column("child_progress_sum", Integer),
    Column("child_progress_mode", String(10)),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("started_at", TS),
    Column("completed_at", TS),
    Column("expires_at", TS, nullable=False),
    # A Live Activity was registered for this job: its changes are pushed by default.
    Column("live_activity", Boolean, nullable=False, server_default=false()),
    CheckConstraint(
        "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')", name="status"
    ),
    CheckConstraint("progress BETWEEN 0 AND 100", name="progress"),
    UniqueConstraint("parent_job_id", "child_index"),
    Index("ix_jobs_owner", "app_id", "mode", "user_id", "id"),
    Index("ix_jobs_expires_at", "expires_at"),
)

eta_stats = Table(
    "eta_stats",
    metadata,
    Column("app_id", String(100), primary_key=True),
    Column("mode", String(4), primary_key=True),
    Column("eta_key", String(120), primary_key=True),  # a job key + "#parent"
    Column("count", BigInteger, nullable=False),
    Column("sum_duration", Double, nullable=False),
    Column("min_duration", BigInteger),
    Column("max_duration", BigInteger),
    Column("default_duration", BigInteger),
    Column("digest", JSONB, nullable=False),
    Column("last_updated", TS, nullable=False),
)

# A completion's contribution to its key's statistics, appended by the completing write's
# own statement (no lock on ``eta_stats``). Readers apply the pending samples on top of the
# stored statistics; a compaction folds them into ``eta_stats`` and deletes them, in one
# transaction, so each sample counts exactly once.
eta_samples = Table(
    "eta_samples",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("app_id", String(100), nullable=False),
    Column("mode", String(4), nullable=False),
    Column("eta_key", String(120), nullable=False),
    Column("sample", JSONB, nullable=False),
    Column("created_at", TS, nullable=False),
    Index("ix_eta_samples_key", "app_id", "mode", "eta_key", "id"),
)

event_streams = Table(
    "event_streams",
    metadata,
    Column("stream_id", BigInteger, Identity(), primary_key=True),
    Column("app_id", String(100), nullable=False),
    Column("mode", String(4), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    UniqueConstraint("app_id", "mode", "user_id"),
)

events = Table(
    "events",
    metadata,
    Column("stream_id", BigInteger, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("job_id", String(26), nullable=False),
    Column("event", String(40), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", TS, nullable=False),
    Index("ix_events_created_at", "created_at"),
    Index("ix_events_job_id", "job_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("app_id", String(100), primary_key=True),
    Column("mode", String(4), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("key_id", String(26), ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Index("ix_dashboard_sessions_expires_at", "expires_at"),
)

# --- push: tokens the apps register, and the outbox of deliveries to APNs -----------------

live_activity_tokens = Table(
    "live_activity_tokens",
    metadata,
    Column("app_id", String(100), primary_key=True),
    Column("mode", String(4), primary_key=True),
    Column("user_id", String(255), primary_key=True),
    Column("device_id", String(255), primary_key=True),
    Column("job_id", String(26), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("token", String(512), nullable=False),
    Column("activity_id", String(255)),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index("ix_live_activity_tokens_job_id", "job_id"),
)

device_tokens = Table(
    "device_tokens",
    metadata,
    Column("app_id", String(100), primary_key=True),
    Column("mode", String(4), primary_key=True),
    Column("user_id", String(255), primary_key=True),
    Column("device_id", String(255), primary_key=True),
    Column("platform", String(10), nullable=False),
    Column("token", String(1024), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    CheckConstraint("platform IN ('ios', 'android')", name="platform"),
)

push_deliveries = Table(
    "push_deliveries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("apns_id", UUID, nullable=False, server_default=text("gen_random_uuid()")),
    Column("app_id", String(100), nullable=False),
    Column("mode", String(4), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("job_id", String(26), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(12), nullable=False),  # liveactivity, alert, background
    Column("event", String(6)),  # a Live Activity's update or end
    Column("token", String(1024), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("coalesced", Integer, nullable=False, server_default=text("0")),
    Column("not_before", TS, nullable=False),
    Column("lease_until", TS),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("sent_at", TS),
    Column("last_status", Integer),
    Column("last_reason", String(100)),
    CheckConstraint("kind IN ('liveactivity', 'alert', 'background')", name="kind"),
    CheckConstraint(
        "status IN ('pending', 'sending', 'sent', 'failed', 'superseded', 'skipped')",
        name="status",
    ),
)

# Keys that sign subscriber tokens (HS256). The newest unretired key signs; a retired key
# still verifies the tokens it signed until they have expired.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(26), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("retired_at", TS),
)

# Per-app authentication settings; an app without a row has the defaults.
app_settings = Table(
    "app_settings",
    metadata,
    Column("app_id", String(100), primary_key=True),
    Column("public_keys_token_only", Boolean, nullable=False, server_default="false"),
    Column("updated_at", TS, nullable=False),
)
