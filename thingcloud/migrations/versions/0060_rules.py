"""rules

Revision ID: 0060
Revises: 0050
Create Date: 2026-11-26 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0060"
down_revision = "0050"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", sa.String(length=34), nullable=False),
        sa.Column("uid", sa.String(length=34), nullable=False),
        sa.Column("aid", sa.String(length=34), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("language_version", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("owner", sa.String(length=12), nullable=False),
        sa.Column("is_testable", sa.Boolean(), nullable=False),
        sa.Column("count_apply", sa.BigInteger(), nullable=False),
        sa.Column("last_apply", sa.BigInteger(), nullable=True),
        sa.Column("invalidated_on", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_on", sa.BigInteger(), nullable=False),
        sa.Column("modified_on", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["uid"], ["users.id"], name=op.f("fk_rules_uid_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules")),
    )
    op.create_index(op.f("ix_rules_uid"), "rules", ["uid"], unique=False)
    op.create_table(
        "rule_states",
        sa.Column("rule_id", sa.String(length=34), nullable=False),
        sa.Column("cond", sa.Integer(), nullable=False),
        sa.Column("did", sa.String(length=64), nullable=False),
        sa.Column("result", sa.Boolean(), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=True),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rules.id"], name=op.f("fk_rule_states_rule_id_rules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rule_id", "cond", "did", name=op.f("pk_rule_states")),
    )
    op.create_table(
        "rule_firings",
        sa.Column("rule_id", sa.String(length=34), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("fired_on", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rules.id"], name=op.f("fk_rule_firings_rule_id_rules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("rule_id", "key", name=op.f("pk_rule_firings")),
    )
    op.create_index("ix_rule_firings_rule_fired", "rule_firings", ["rule_id", "fired_on"], unique=False)
    op.create_table(
        "rule_traces",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("rule_id", sa.String(length=34), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["rules.id"], name=op.f("fk_rule_traces_rule_id_rules"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rule_traces")),
    )
    op.create_index("ix_rule_traces_rule_id", "rule_traces", ["rule_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_rule_traces_rule_id", table_name="rule_traces")
    op.drop_table("rule_traces")
    op.drop_index("ix_rule_firings_rule_fired", table_name="rule_firings")
    op.drop_table("rule_firings")
    op.drop_table("rule_states")
    op.drop_index(op.f("ix_rules_uid"), table_name="rules")
    op.drop_table("rules")
