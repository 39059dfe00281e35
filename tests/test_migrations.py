"""The migrations and ``thingcloud/tables.py`` describe the same schema, on SQLite and PostgreSQL, and
every migration can be undone: upgrading an empty database to head leaves nothing for Alembic's
autogenerate to add, and downgrading to base and upgrading again works."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from thingcloud import tables as t
from thingcloud.db import Database
from thingcloud.migrate import alembic_config, migrate
from thingcloud.settings import Settings

from .conftest import TEST_DATABASE_URL, scratch_database_url


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [d for d in compare_metadata(context, t.metadata) if not _benign(d)]


def _benign(difference: Any) -> bool:
    # SQLite reports no server-side types beyond its affinities for some columns; those are not drift.
    return isinstance(difference, list) and all(op[0] == "modify_type" for op in difference)


def _downgrade_to_base(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "base")


async def _check(url: str) -> None:
    db = Database(Settings(database_url=url))
    try:
        await migrate(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            if db.is_sqlite:
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.run_sync(_downgrade_to_base)
            await conn.commit()
        await migrate(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await db.close()


def test_migrations_match_the_tables_on_sqlite(tmp_path: Path) -> None:
    asyncio.run(_check(f"sqlite+aiosqlite:///{tmp_path / 'schema.db'}"))


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="needs THINGCLOUD_TEST_DATABASE_URL (PostgreSQL)")
def test_migrations_match_the_tables_on_postgresql() -> None:
    asyncio.run(_check(scratch_database_url()))
