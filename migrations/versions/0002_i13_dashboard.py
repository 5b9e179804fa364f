"""Dashboard: server-side browser sessions, and an index for the app-wide job list.

Revision ID: i13_dashboard
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "i13_dashboard"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE dashboard_sessions (
    token_hash bytea PRIMARY KEY,
    key_id varchar(26) NOT NULL
        CONSTRAINT dashboard_sessions_key_id_fkey REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token varchar(64) NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ix_dashboard_sessions_expires_at ON dashboard_sessions (expires_at);
CREATE INDEX ix_jobs_app_recent ON jobs (app_id, mode, id) WHERE parent_job_id IS NULL;
"""

DOWNGRADE = """
DROP INDEX ix_jobs_app_recent;
DROP TABLE dashboard_sessions;
"""


def _run(script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
