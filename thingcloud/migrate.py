"""Schema migrations: ``thingcloud migrate`` and the check behind ``/readyz``.

Several nodes may start at once, so migrating holds a database-wide lock: a PostgreSQL advisory lock,
or an exclusive lock on a file beside the SQLite database.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from thingcloud.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
ADVISORY_LOCK = 0x7468696E67  # "thing"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(db: Database, revision: str = "head") -> None:
    if db.is_sqlite:
        database = db.engine.url.database or ""
        lock_path = Path(database + ".migrate.lock") if database not in ("", ":memory:") else None
        with _file_lock(lock_path):
            async with db.engine.connect() as conn:
                # Alembic's batch mode rebuilds a table by copy, drop and rename; with foreign keys on,
                # the drop would cascade-delete the rows that reference it.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                await conn.commit()
                await conn.run_sync(_upgrade, revision)
                await conn.commit()
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                await conn.commit()
        return
    async with db.engine.connect() as conn:
        await conn.execute(text(f"SELECT pg_advisory_lock({ADVISORY_LOCK})"))
        await conn.commit()
        try:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        finally:
            await conn.execute(text(f"SELECT pg_advisory_unlock({ADVISORY_LOCK})"))
            await conn.commit()


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)
