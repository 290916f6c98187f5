"""Engine creation, SQLite tuning, and schema migration via Alembic."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets readers (status, dispatcher) run beside the receiver's writes.
    # synchronous=NORMAL does not fsync each commit; the spool file itself is
    # fsynced before the row is written, and start-up re-indexes spool files
    # that a power cut left without a row (spool.recover), so nothing acknowledged is lost.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for the node's migrations (and the database at ``url``, if given)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class SchemaError(RuntimeError):
    """The database's schema is not the revision this code needs (and this command does not migrate)."""


class Database:
    """A configured engine plus a session factory.

    For SQLite a process-wide lock serialises writers from the receiver's
    threads: SQLite allows one writer anyway, and waiting on a Python lock
    is cheaper and fairer than spinning on ``database is locked``.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite and url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}} if self.is_sqlite else {"pool_pre_ping": True, "pool_size": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = threading.Lock() if self.is_sqlite else None
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command

        cfg = alembic_config(self.url)
        cfg.attributes["engine"] = self.engine
        command.upgrade(cfg, "head")

    def schema_revisions(self) -> tuple[str | None, str | None]:
        """(the database's Alembic revision, the newest this code knows); read only."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision(), head

    def require_current_schema(self) -> None:
        """Raise :class:`SchemaError` unless the schema is current.

        For commands that must not migrate: ``status`` (read only, maybe under
        a read-only database role) and ``retry`` (writes rows, but a schema
        change belongs to the node's start-up, not to a side command).
        """
        current, head = self.schema_revisions()
        if current != head:
            raise SchemaError(
                f"the database schema is at revision {current or 'none'}, this dicom-node needs {head}; "
                "start the node (`dicom-node serve` migrates at start-up) and try again"
            )

    def session(self) -> Session:
        return self._factory()

    @contextmanager
    def _serialised(self) -> Iterator[None]:
        """Hold the write lock on SQLite (one writer at a time); nothing on other databases."""
        if self.write_lock is None:
            yield
            return
        with self.write_lock:
            yield

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose commit is serialised on SQLite; commits on success."""
        with self._serialised(), self._factory() as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core connection in a transaction, serialised like :meth:`write`; commits on success.

        For the receiver's per-object fast path, where the ORM session's
        bookkeeping would cost more than the statements themselves.
        """
        with self._serialised(), self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
