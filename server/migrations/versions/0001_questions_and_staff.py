"""Questions, votes, staff accounts and sessions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "questions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("theme", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("author", sa.String(200)),
        sa.Column("segment_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("starred", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("queue_position", sa.Integer),
        sa.Column("on_air", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("votes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("merged_into", sa.Integer),
        sa.Column("flags", sa.Text, nullable=False, server_default="[]"),
        sa.Column("note", sa.Text),
        sa.Column("viewer_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_questions_status_theme", "questions", ["status", "theme"])
    op.create_index("ix_questions_viewer", "questions", ["viewer_id"])
    op.create_index("ux_questions_on_air", "questions", ["on_air"], unique=True,
                    sqlite_where=sa.text("on_air"), postgresql_where=sa.text("on_air"))
    op.create_table(
        "votes",
        sa.Column("question_id", sa.Integer,
                  sa.ForeignKey("questions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("viewer_id", sa.String(64), primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "staff",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "staff_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("staff_id", sa.Integer, sa.ForeignKey("staff.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("staff_sessions")
    op.drop_table("staff")
    op.drop_table("votes")
    op.drop_table("questions")
