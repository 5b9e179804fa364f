"""jobs.live_activity: a Live Activity was registered for the job, so its changes are pushed.

Revision ID: i12_live_activity_flag
Revises: i16_eta_parent_keys
"""

from __future__ import annotations

from alembic import op

revision = "i12_live_activity_flag"
down_revision = "i16_eta_parent_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.execute("ALTER TABLE jobs ADD COLUMN live_activity boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN live_activity")
