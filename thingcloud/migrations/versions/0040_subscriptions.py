"""subscriptions

Revision ID: 0040
Revises: 0030
Create Date: 2026-11-26 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("aid", sa.String(length=34), nullable=False),
        sa.Column("uid", sa.String(length=34), nullable=False),
        sa.Column("message_type", sa.String(length=10), nullable=False),
        sa.Column("subscription_type", sa.String(length=20), nullable=False),
        sa.Column("sdtid", sa.String(length=100), nullable=True),
        sa.Column("sdid", sa.String(length=34), nullable=True),
        sa.Column("ddid", sa.String(length=34), nullable=True),
        sa.Column("include_shared", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("aws_key", sa.String(length=200), nullable=True),
        sa.Column("aws_secret_encrypted", sa.Text(), nullable=True),
        sa.Column("aws_region", sa.String(length=50), nullable=True),
        sa.Column("aws_stream", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("nonce_encrypted", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index(op.f("ix_subscriptions_aid"), "subscriptions", ["aid"], unique=False)
    op.create_index(op.f("ix_subscriptions_uid"), "subscriptions", ["uid"], unique=False)
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("start_date", sa.BigInteger(), nullable=False),
        sa.Column("end_date", sa.BigInteger(), nullable=False),
        sa.Column("first_cts", sa.BigInteger(), nullable=False),
        sa.Column("due_on", sa.BigInteger(), nullable=False),
        sa.Column("delivered_on", sa.BigInteger(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sid"],
            ["subscriptions.id"],
            name=op.f("fk_notifications_sid_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index("ix_notifications_sid_status", "notifications", ["sid", "status"], unique=False)
    op.create_table(
        "notification_items",
        sa.Column("sid", sa.String(length=34), nullable=False),
        sa.Column("mid", sa.String(length=32), nullable=False),
        sa.Column("nid", sa.String(length=34), nullable=False),
        sa.Column("did", sa.String(length=34), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["nid"],
            ["notifications.id"],
            name=op.f("fk_notification_items_nid_notifications"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sid"],
            ["subscriptions.id"],
            name=op.f("fk_notification_items_sid_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sid", "mid", name=op.f("pk_notification_items")),
    )
    op.create_index("ix_notification_items_nid_ts", "notification_items", ["nid", "ts"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_notification_items_nid_ts", table_name="notification_items")
    op.drop_table("notification_items")
    op.drop_index("ix_notifications_sid_status", table_name="notifications")
    op.drop_table("notifications")
    op.drop_index(op.f("ix_subscriptions_uid"), table_name="subscriptions")
    op.drop_index(op.f("ix_subscriptions_aid"), table_name="subscriptions")
    op.drop_table("subscriptions")
