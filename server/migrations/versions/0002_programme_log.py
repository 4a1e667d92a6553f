"""The programme's append-only take log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "programme_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("show", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("segment_id", sa.String(64)),
        sa.Column("seconds", sa.Float),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # Two processes appending the same step: the database lets one win.
        sa.UniqueConstraint("show", "seq", name="uq_programme_log_show_seq"),
    )


def downgrade() -> None:
    op.drop_table("programme_log")
