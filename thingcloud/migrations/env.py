"""Alembic environment: runs on the connection ``thingcloud.migrate`` hands it (async engine)."""

from __future__ import annotations

from alembic import context

from thingcloud.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `thingcloud migrate`, which provides the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
