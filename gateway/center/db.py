"""The two databases a center can keep its store in, behind one small interface.

- SQLite (stdlib ``sqlite3``): one file next to the configuration, one connection, used by one worker
  thread so the event loop never waits on the disk. An asyncio lock makes each transaction exclusive
  (``BEGIN IMMEDIATE``). Change notices stay in the process.
- PostgreSQL (``asyncpg``): a connection pool, and one more connection that LISTENs, so a change one
  replica commits reaches every replica's subscribers (``pg_notify`` inside the transaction is
  delivered at commit, to the writer too).

Statements are written once, with ``?`` placeholders; PostgreSQL gets them numbered. Rows come back
as dicts. :meth:`Database.migrate` brings a database to the newest schema (:mod:`.migrations`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.center.migrations import MIGRATIONS, render

log = logging.getLogger("ztgate.center.db")

__all__ = ["CHANNEL", "Database", "PostgresDatabase", "SqliteDatabase", "StoreError", "open_database"]

CHANNEL = "ztgate_center"
Row = dict[str, Any]
Listener = Callable[[str], None]
_PLACEHOLDER = re.compile(r"\?")


class StoreError(RuntimeError):
    """The store cannot be used as it is (a newer schema, an unreachable server); says why."""


class Transaction(abc.ABC):
    def __init__(self) -> None:
        self.committed: list[Callable[[], None]] = []  # run once the transaction has committed

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this transaction has committed; never if it rolls back."""
        self.committed.append(action)

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def notify(self, topic: str) -> None:
        """Tell every replica's listeners about ``topic`` once this transaction commits."""


class Database(abc.ABC):
    dialect: str

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def on_notify(self, listener: Listener) -> None:
        """Call ``listener(topic)`` for every committed change (of any replica on PostgreSQL)."""
        self._listeners.append(listener)

    def _deliver(self, topic: str) -> None:
        for listener in self._listeners:
            try:
                listener(topic)
            except Exception:  # one broken subscriber must not silence the others
                log.exception("change listener failed")

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self.transaction() as tx:
            return await tx.fetch(sql, *args)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; returns their numbers."""
        applied: list[int] = []
        async with self.transaction() as tx:
            await self._lock_schema(tx)
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            rows = await tx.fetch("SELECT version FROM schema_migrations")
            done = {int(row["version"]) for row in rows}
            known = {version for version, _, _ in MIGRATIONS}
            if done - known:
                raise StoreError(
                    f"the store has schema migrations {sorted(done - known)} that this ztgate does not "
                    "know: it was written by a newer center"
                )
            for version, description, sql in MIGRATIONS:
                if version in done:
                    continue
                for statement in render(sql, self.dialect):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    version,
                    description,
                    time.time(),
                )
                applied.append(version)
        return applied

    @abc.abstractmethod
    async def _lock_schema(self, tx: Transaction) -> None:
        """Keep two replicas starting at once from migrating together."""


def _committed(tx: Transaction) -> None:
    for action in tx.committed:
        try:
            action()
        except Exception:  # the commit stands; one failing follower must not hide it from the others
            log.exception("after-commit action failed")


# --------------------------------------------------------------------------------------------- SQLite


class _SqliteTransaction(Transaction):
    def __init__(self, db: SqliteDatabase) -> None:
        super().__init__()
        self._db = db
        self.topics: list[str] = []

    async def execute(self, sql: str, *args: Any) -> int:
        count: int = await self._db._run(lambda conn: conn.execute(sql, args).rowcount)
        return count

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        def query(conn: sqlite3.Connection) -> list[Row]:
            cursor = conn.execute(sql, args)
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        rows: list[Row] = await self._db._run(query)
        return rows

    async def notify(self, topic: str) -> None:
        self.topics.append(topic)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="center-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._conn
        assert conn is not None, "the database is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, conn)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def _lock_schema(self, tx: Transaction) -> None:
        pass  # BEGIN IMMEDIATE holds the write lock already

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:  # a read needs no write lock, only the connection to itself
            return await _SqliteTransaction(self).fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            tx = _SqliteTransaction(self)
            await self._run(lambda conn: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield tx
            except BaseException:
                await self._run(lambda conn: conn.execute("ROLLBACK"))
                raise
            await self._run(lambda conn: conn.execute("COMMIT"))
        _committed(tx)
        for topic in tx.topics:
            self._deliver(topic)


# ----------------------------------------------------------------------------------------- PostgreSQL


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PostgresTransaction(Transaction):
    def __init__(self, conn: Any) -> None:
        super().__init__()
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(_numbered(sql), *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(record) for record in await self._conn.fetch(_numbered(sql), *args)]

    async def notify(self, topic: str) -> None:
        await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, topic)


class PostgresDatabase(Database):
    dialect = "postgresql"
    RELISTEN_S = 1.0

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self._pool: Any = None
        self._listen_conn: Any = None
        self._watch: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import asyncpg

        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=8, command_timeout=30)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot reach the PostgreSQL store: {exc}") from None
        await self._listen()
        self._watch = asyncio.get_running_loop().create_task(self._keep_listening())

    async def _listen(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: self._deliver(payload))
        self._listen_conn = conn

    async def _keep_listening(self) -> None:
        # A lost LISTEN connection (server restart, network) is made again; what was announced meanwhile
        # is caught up by the subscribers, which re-read the heads on a "*" notice.
        while True:
            await asyncio.sleep(self.RELISTEN_S)
            if self._listen_conn is not None and not self._listen_conn.is_closed():
                continue
            try:
                await self._listen()
            except Exception as exc:
                log.warning("PostgreSQL LISTEN connection lost, retrying: %s", exc)
                continue
            self._deliver("*")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close(timeout=5)
        if self._pool is not None:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._pool.acquire() as conn:
            tx = _PostgresTransaction(conn)
            async with conn.transaction():
                yield tx
        _committed(tx)

    async def _lock_schema(self, tx: Transaction) -> None:
        await tx.fetch("SELECT pg_advisory_xact_lock(7023511)")


def open_database(url: str, base: Path) -> Database:
    """``sqlite:PATH`` (relative to ``base``) or ``postgresql://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:"))
        return SqliteDatabase(path if path.is_absolute() else base / path)
    raise StoreError(f"store {url!r}: expected sqlite:FILE or postgresql://...")
