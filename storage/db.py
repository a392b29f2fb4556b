"""Engines for the job database, and its schema migrations.

Two backends: SQLite for a single machine, Postgres when several hosts share one queue. SQLite
engines run in WAL mode with a busy timeout and enforced foreign keys, and SQLAlchemy (not the
pysqlite driver) emits BEGIN, so that writers can take the write lock up front with
``BEGIN IMMEDIATE`` (see ``write_engine``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError

from storage.errors import DatabaseMissing, StorageUnavailable

if TYPE_CHECKING:
    # Alembic loads when the schema changes (start-up, db upgrade): the commands that only
    # read or change jobs start a third of a second sooner without it.
    from alembic.config import Config

BUSY_TIMEOUT_MS = 5000
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)
_IMMEDIATE = "drishtiksha_begin_immediate"  # execution option read by _sqlite_begin
_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant will do, as long as every process upgrading the schema uses the same one.
_PG_UPGRADE_LOCK = 0x6472697368


def make_engine(url: str, *, create: bool = True) -> Engine:
    """Engine for ``sqlite:///path`` (WAL, busy_timeout, foreign keys, parent folder created) or
    ``postgresql+psycopg://...``.

    ``create=False`` opens an existing database only (commands that inspect or change jobs):
    a missing SQLite file raises ``DatabaseMissing`` instead of being created empty, and a
    database without the schema raises it too."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not create:
            return _existing_sqlite_engine(parsed)
        return _sqlite_engine(parsed)
    if parsed.drivername == "postgresql":
        # SQLAlchemy would pick psycopg2 for a bare postgresql://; psycopg 3 is what is installed.
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
    # pre_ping: a long-running daemon outlives server restarts and idle-connection reaping.
    engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    if not create:
        _require_schema(engine, parsed.render_as_string())
    return engine


def write_engine(engine: Engine) -> Engine:
    """The same engine, but on SQLite its transactions start with ``BEGIN IMMEDIATE``.

    A WAL transaction that reads and then writes fails at once with "database is locked" when
    another writer committed in between, whatever the busy timeout; taking the write lock at BEGIN
    makes it wait on the busy timeout instead. Postgres ignores the option.
    """
    return engine.execution_options(**{_IMMEDIATE: True})


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations (packaged in storage/migrations) up to ``revision``."""
    from alembic import command

    _migrate(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to ``revision`` (``drishtiksha db downgrade``)."""
    from alembic import command

    _migrate(engine, lambda config: command.downgrade(config, revision))


def _migrate(engine: Engine, run: Callable[[Config], None]) -> None:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    with write_engine(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Processes starting together would otherwise race to create the same tables.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
        config.attributes["connection"] = conn
        run(config)


def ping(engine: Engine) -> None:
    """SELECT 1; raises when the database is unreachable."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise StorageUnavailable(f"{engine.url.render_as_string()}: {exc.orig}") from exc


def _sqlite_engine(url: URL) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _existing_sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database == ":memory:" or database.startswith("file:"):
        raise DatabaseMissing(f"{url.render_as_string()} is not a database file")
    path = Path(database)
    if not path.is_file():
        raise DatabaseMissing(f"no job database at {path.absolute()}")
    # mode=rw: the driver opens the file as it is and never creates one in its place.
    engine = create_engine(
        url.set(database=f"file:{path.absolute()}", query={"mode": "rw", "uri": "true"})
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    _require_schema(engine, str(path.absolute()))
    return engine


def _require_schema(engine: Engine, name: str) -> None:
    """DatabaseMissing unless the database ``name`` holds the job tables (and can be
    reached)."""
    try:
        has_jobs = inspect(engine).has_table("jobs")
    except DBAPIError as exc:
        engine.dispose()
        raise StorageUnavailable(f"{name}: {exc.orig}") from exc
    if not has_jobs:
        engine.dispose()
        raise DatabaseMissing(
            f"{name} holds no job tables: start the daemon or run `drishtiksha db upgrade`"
        )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Stop pysqlite from emitting BEGIN itself (it would defer it to the first write and never
    # make it IMMEDIATE); _sqlite_begin does it. COMMIT and ROLLBACK still go through the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(
        "BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN"
    )
