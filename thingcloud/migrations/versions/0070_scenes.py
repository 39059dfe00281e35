"""scenes

Revision ID: 0070
Revises: 0060
Create Date: 2026-11-26 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0070"
down_revision = "0060"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("uid", sa.String(length=34), nullable=False),
        sa.Column("aid", sa.String(length=34), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("invalidated_on", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["uid"], ["users.id"], name=op.f("fk_scenes_uid_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scenes")),
    )
    op.create_index("ix_scenes_uid_aid", "scenes", ["uid", "aid", "created_on"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_scenes_uid_aid", table_name="scenes")
    op.drop_table("scenes")
