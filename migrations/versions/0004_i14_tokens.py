"""Subscriber tokens: signing keys shared by every replica, and per-app auth settings.

Revision ID: i14_tokens
Revises: i12_push
"""

from __future__ import annotations

from alembic import op

revision = "i14_tokens"
down_revision = "i12_push"
branch_labels = None
depends_on = None

UPGRADE = (
    """CREATE TABLE signing_keys (
        kid varchar(26) PRIMARY KEY,
        secret bytea NOT NULL CONSTRAINT signing_keys_secret_check CHECK (length(secret) >= 32),
        created_at timestamptz NOT NULL,
        retired_at timestamptz
    )""",
    "CREATE INDEX ix_signing_keys_current ON signing_keys (created_at) WHERE retired_at IS NULL",
    """CREATE TABLE app_settings (
        app_id varchar(100) PRIMARY KEY,
        public_keys_token_only boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL
    )""",
)
DOWNGRADE = ("DROP TABLE app_settings", "DROP TABLE signing_keys")


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
