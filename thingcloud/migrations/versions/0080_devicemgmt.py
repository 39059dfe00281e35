"""devicemgmt

Revision ID: 0080
Revises: 0070
Create Date: 2026-11-26 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0080"
down_revision = "0070"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dm_configs",
        sa.Column("dtid", sa.String(length=100), nullable=False),
        sa.Column("device_properties_enabled", sa.Boolean(), nullable=False),
        sa.Column("pmin", sa.Integer(), nullable=False),
        sa.Column("pmax", sa.Integer(), nullable=False),
        sa.Column("task_expires_after", sa.Integer(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dtid"], ["device_types.id"], name=op.f("fk_dm_configs_dtid_device_types"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("dtid", name=op.f("pk_dm_configs")),
    )
    op.create_table(
        "dm_manifests",
        sa.Column("dtid", sa.String(length=100), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dtid"], ["device_types.id"], name=op.f("fk_dm_manifests_dtid_device_types"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("dtid", name=op.f("pk_dm_manifests")),
    )
    op.create_table(
        "dm_properties",
        sa.Column("did", sa.String(length=34), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("dtid", sa.String(length=100), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("match", sa.String(length=200), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["did"], ["devices.id"], name=op.f("fk_dm_properties_did_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("did", "path", name=op.f("pk_dm_properties")),
    )
    op.create_index(
        "ix_dm_properties_filter", "dm_properties", ["dtid", "path", "match", "did"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_dm_properties_filter", table_name="dm_properties")
    op.drop_table("dm_properties")
    op.drop_table("dm_manifests")
    op.drop_table("dm_configs")
