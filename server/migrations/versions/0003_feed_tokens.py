"""One bearer token per video source (WHIP publishing, the contributor page).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_tokens",
        sa.Column("feed", sa.String(64), primary_key=True),
        # Kept in clear, like a password the operator must be able to print
        # again for the site (run.py feed-token); guard the database as such.
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("feed_tokens")
