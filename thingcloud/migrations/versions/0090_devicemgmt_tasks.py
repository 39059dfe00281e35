"""devicemgmt tasks

Revision ID: 0090
Revises: 0080
Create Date: 2026-11-26 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0090"
down_revision = "0080"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dm_tasks",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("dtid", sa.String(length=100), nullable=False),
        sa.Column("filter", sa.Text(), nullable=True),
        sa.Column("dids", sa.JSON(), nullable=True),
        sa.Column("task_type", sa.String(length=2), nullable=False),
        sa.Column("property", sa.String(length=300), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("needs_acceptance", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("expires_on", sa.BigInteger(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dtid"], ["device_types.id"], name=op.f("fk_dm_tasks_dtid_device_types"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dm_tasks")),
    )
    op.create_index("ix_dm_tasks_dtid_created", "dm_tasks", ["dtid", "created_on"], unique=False)
    op.create_table(
        "dm_device_tasks",
        sa.Column("tid", sa.String(length=34), nullable=False),
        sa.Column("did", sa.String(length=34), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("acceptance", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("sent_at", sa.BigInteger(), nullable=True),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tid"], ["dm_tasks.id"], name=op.f("fk_dm_device_tasks_tid_dm_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["did"], ["devices.id"], name=op.f("fk_dm_device_tasks_did_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tid", "did", name=op.f("pk_dm_device_tasks")),
    )
    op.create_index("ix_dm_device_tasks_did_status", "dm_device_tasks", ["did", "status"], unique=False)
    op.create_index("ix_dm_device_tasks_tid_status", "dm_device_tasks", ["tid", "status"], unique=False)
    op.create_table(
        "dm_task_history",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("tid", sa.String(length=34), nullable=False),
        sa.Column("did", sa.String(length=34), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tid"], ["dm_tasks.id"], name=op.f("fk_dm_task_history_tid_dm_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dm_task_history")),
    )
    op.create_index("ix_dm_task_history_tid", "dm_task_history", ["tid", "id"], unique=False)
    op.create_table(
        "dm_updates",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("dtid", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dtid"], ["device_types.id"], name=op.f("fk_dm_updates_dtid_device_types"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dm_updates")),
    )
    op.create_index(op.f("ix_dm_updates_dtid"), "dm_updates", ["dtid"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dm_updates_dtid"), table_name="dm_updates")
    op.drop_table("dm_updates")
    op.drop_index("ix_dm_task_history_tid", table_name="dm_task_history")
    op.drop_table("dm_task_history")
    op.drop_index("ix_dm_device_tasks_tid_status", table_name="dm_device_tasks")
    op.drop_index("ix_dm_device_tasks_did_status", table_name="dm_device_tasks")
    op.drop_table("dm_device_tasks")
    op.drop_index("ix_dm_tasks_dtid_created", table_name="dm_tasks")
    op.drop_table("dm_tasks")
