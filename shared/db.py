"""Engine and session handling for every process (API, worker children, CLI)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Result,
    create_engine,
    event,
    exc,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

_engines: dict[str, Engine] = {}
_read_engines: dict[str, Engine] = {}

# The read engine's connections are replaced after this long, so one a firewall or the
# server dropped while idle is rarely met; one that is met is retried once (read_once).
READ_POOL_RECYCLE_S = 300
READ_POOL_SIZE = 10


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API write while a worker reads; busy_timeout turns lock
    # contention into a short wait instead of "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def get_engine(url: str) -> Engine:
    """One engine per URL per process."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url)
    return engine


def read_engine(url: str) -> Engine:
    """The engine of the API's hot reads (:func:`read_once`): no pre-ping per checkout (a
    round trip per request), connections recycled instead, and autocommit, so that a
    read is its one statement, with no ``BEGIN`` and no ``COMMIT`` around it."""
    engine = _read_engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            base = get_engine(url)
        else:
            # Sized for a gthread worker's concurrent polls: a pool smaller than the
            # requests in flight opened and closed an overflow connection per poll
            # (5 % of a worker's time in the profile, and a new PostgreSQL backend each).
            base = create_engine(
                url,
                pool_recycle=READ_POOL_RECYCLE_S,
                pool_size=READ_POOL_SIZE,
                max_overflow=READ_POOL_SIZE,
            )
        engine = _read_engines[url] = base.execution_options(isolation_level="AUTOCOMMIT")
    return engine


T = TypeVar("T")


def read_once(url: str, work: Callable[[Connection], T]) -> T:
    """``work`` on a pooled autocommit connection, run again once if the connection
    turned out to be dead (the database restarted, or dropped it while idle): the
    pool is invalidated with it, so the second try gets a new connection. Only for
    reads, which are safe to run twice."""
    engine = read_engine(url)
    try:
        with engine.connect() as conn:
            return work(conn)
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    with engine.connect() as conn:
        return work(conn)


def dispose_engines() -> None:
    """Drop pooled connections inherited across fork (call in each new child process)."""
    for engine in (*_engines.values(), *_read_engines.values()):
        engine.dispose(close=False)


def close_engines() -> None:
    """Close every pooled connection and forget the engines (before a fork)."""
    for engine in (*_engines.values(), *_read_engines.values()):
        engine.dispose()
    _engines.clear()
    _read_engines.clear()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> None:
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))


# Errors that mean "the database cannot be reached now" (down, restarting, network),
# as opposed to a bad query or a broken constraint: the work is to be retried later.
_UNAVAILABLE = (exc.OperationalError, exc.InterfaceError)


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` (or what it wraps) says the database is out of reach, so the
    caller should retry later instead of recording a failure."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNAVAILABLE):
            return True
        if isinstance(current, exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def insert_if_absent(
    session: Session, model: type[DeclarativeBase], row: dict[str, object]
) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True if this call inserted the row: how a
    claim by insertion learns whether it won. Not a try/except IntegrityError: that
    would roll back the caller's whole transaction."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    first_key = inspect(model).primary_key[0]
    stmt = (
        insert(model)
        .values(**row)
        .on_conflict_do_nothing()
        # RETURNING, not rowcount: psycopg reports -1 for a skipped-or-not INSERT here.
        .returning(first_key)
    )
    return session.execute(stmt).first() is not None


def affected(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched: how a compare-and-set learns whether it won."""
    return cast(CursorResult[Any], result).rowcount
