"""ETA keys of parents: a job's key plus ``#parent`` (up to 107 characters).

Revision ID: i16_eta_parent_keys
Revises: i14_tokens
"""

from __future__ import annotations

from alembic import op

revision = "i16_eta_parent_keys"
down_revision = "i14_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE eta_stats ALTER COLUMN eta_key TYPE varchar(120)")


def downgrade() -> None:
    op.execute("DELETE FROM eta_stats WHERE length(eta_key) > 100")
    op.execute("ALTER TABLE eta_stats ALTER COLUMN eta_key TYPE varchar(100)")
