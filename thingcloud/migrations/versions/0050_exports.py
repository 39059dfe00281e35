"""exports

Revision ID: 0050
Revises: 0040
Create Date: 2026-11-26 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0050"
down_revision = "0040"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("uid", sa.String(length=34), nullable=True),
        sa.Column("aid", sa.String(length=34), nullable=True),
        sa.Column("did", sa.String(length=34), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=True),
        sa.Column("file_size", sa.BigInteger(), nullable=True),
        sa.Column("total_messages", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("expires_on", sa.BigInteger(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )
    op.create_index("ix_exports_uid_created", "exports", ["uid", "created_on"], unique=False)
    op.create_index("ix_exports_aid_created", "exports", ["aid", "created_on"], unique=False)
    op.create_index("ix_exports_status_expires", "exports", ["status", "expires_on"], unique=False)
    op.create_table(
        "message_imports",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("sdid", sa.String(length=34), nullable=False),
        sa.Column("uid", sa.String(length=34), nullable=True),
        sa.Column("aid", sa.String(length=34), nullable=True),
        sa.Column("did", sa.String(length=34), nullable=True),
        sa.Column("format", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("total_rows", sa.BigInteger(), nullable=False),
        sa.Column("imported", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_imports")),
    )


def downgrade() -> None:
    op.drop_table("message_imports")
    op.drop_index("ix_exports_status_expires", table_name="exports")
    op.drop_index("ix_exports_aid_created", table_name="exports")
    op.drop_index("ix_exports_uid_created", table_name="exports")
    op.drop_table("exports")
