"""The tracking store's health: a URI checked before use, created once under a lock, repaired or
reported in one line when it is damaged, and a server that is down found in seconds.

MLflow alone gets these wrong in ways that lose work: two processes creating a fresh sqlite store
race on its schema (alembic's ``_alembic_tmp_*`` tables), a process killed while creating it leaves
a half-migrated file that every later command fails on with a long traceback, and a client whose
server is down retries silently for minutes. So every command goes through ``open_store``:

* the URI's scheme must be one MLflow can track to (``sqlite:///``, ``http(s)://``, a database
  URL); a plain path or ``file:`` store is refused with the sqlite equivalent to use;
* a sqlite store is created, migrated and has its experiment made while holding an exclusive
  ``fcntl`` lock on ``<database>.lock`` (which is also the test that the folder is writable);
* a store that will not open and holds no runs is moved aside (``<name>.damaged-<time>``) and made
  again, with a warning; one that holds runs is never touched, and the error says how to recover;
* a server is asked for ``/health`` with a short timeout first, and MLflow's own HTTP retries are
  bounded (unless the user set ``MLFLOW_HTTP_REQUEST_*`` themselves).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https")
HEALTH_TIMEOUT_SECONDS = 5.0
# MLflow's defaults are 7 retries with exponential backoff and a 120 s timeout (about 4 minutes
# of silence against a server that is down); a benchmark would rather fail and be rerun.
# Against a server MLflow also prints two "View run ... at" lines per finished run; growbench
# prints its own line per cell.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
SERVER_HINT = (
    "start one with `mlflow server --host 127.0.0.1 --port 5000` or pass another --tracking-uri"
)


class StoreError(ValueError):
    """The tracking store cannot be used; the message names the URI and what to do."""


class StoreUnreachableError(StoreError):
    """A tracking server stopped answering, or answered as something other than MLflow, while a
    command was using it; nothing is asked of it again (see ``GuardedClient``)."""


class StoreRepairedWarning(UserWarning):
    """A damaged store that held no runs was moved aside and created again."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
    if not uri.startswith("sqlite:///") or uri == "sqlite:///":
        raise StoreError(
            f"tracking URI {uri!r}: a sqlite store is sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    name = uri.removeprefix("sqlite:///")
    if name.split("?")[0] in ("", ":memory:") or "mode=memory" in name:
        raise StoreError(
            f"tracking URI {uri!r} is an in-memory database, whose runs are gone when the "
            "command ends; use a file, e.g. sqlite:///mlflow.db"
        )
    return Path(name)


def check_uri(uri: str) -> str:
    """The URI's kind (``sqlite``, ``server`` or ``database``), or one ``StoreError`` saying what
    store URIs look like."""
    if sqlite_path(uri) is not None:
        return "sqlite"
    try:
        parts = urlparse(uri)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise StoreError(
            f"tracking URI {uri!r} is not a valid URL ({exc}); e.g. http://127.0.0.1:5000, "
            "http://[::1]:5000 or sqlite:///mlflow.db"
        ) from None
    scheme = parts.scheme.split("+")[0]
    if scheme in SERVER_SCHEMES:
        if not parts.netloc:
            raise StoreError(f"tracking URI {uri!r} names no host; e.g. http://127.0.0.1:5000")
        return "server"
    if scheme in DATABASE_SCHEMES:
        return "database"
    if scheme in ("", "file") or len(scheme) == 1:
        path = parts.path if scheme == "file" else uri
        raise StoreError(
            f"tracking URI {uri!r}: file stores are not supported (MLflow deprecates them and "
            f"they cannot be shared safely); use sqlite:///{Path(path).with_suffix('.db')}"
        )
    raise StoreError(
        f"tracking URI {uri!r}: unknown scheme {scheme!r}; use sqlite:///mlflow.db, "
        "http://HOST:PORT (an `mlflow server`) or a database URL (postgresql://...)"
    )


def check_store_uri(uri: str) -> None:
    """The checks that need no store: the URI's form, and that a server answers."""
    if check_uri(uri) == "server":
        bound_http_retries()
        check_server(uri)


def bound_http_retries() -> None:
    """Fail in seconds, not minutes, against a server that is down (user settings win)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


# An MLflow server answers this with JSON: the experiment, or RESOURCE_DOES_NOT_EXIST.
PROBE_PATH = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=growbench-probe"


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
    """Two quick requests: the server is up (``/health``) and speaks MLflow's REST API (an
    experiment lookup answered in JSON); ``StoreError`` naming the URI and what is wrong."""
    _answer(uri, "/health", timeout)
    body = _answer(uri, PROBE_PATH, timeout)
    try:
        json.loads(body)
    except ValueError:
        raise StoreError(
            f"tracking server {uri} is up but is not an MLflow tracking server (its REST API "
            f"answered {body[:60]!r}); {SERVER_HINT}"
        ) from None


def _answer(uri: str, path: str, timeout: float) -> str:
    """The body the server gives ``path``, an error's body included (MLflow answers a missing
    experiment with 404 and JSON; a server that is not MLflow, with its own 404 page)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + path, timeout=timeout) as response:
            return response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            return exc.read(4096).decode("utf-8", "replace")
        raise StoreError(
            f"tracking server {uri} answered {path.split('?')[0]} with HTTP {exc.code}; "
            "is it an MLflow server you may use?"
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreError(
            f"tracking server {uri} is not reachable ({reason}); {SERVER_HINT}"
        ) from None


def server_gone(error: BaseException) -> bool:
    """Whether an MLflow client call failed because the server did not answer (refused, reset,
    timed out) or answered without MLflow's JSON, rather than with an MLflow error."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, requests.exceptions.RequestException):
        return True
    return (
        isinstance(error, MlflowException)
        and not isinstance(error, RestException)
        and str(error).startswith("API request to")
    )


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a sqlite store (a no-op for servers and databases, which
    serialise their own writes). Creating the lock file is also the writability check."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")  # noqa: SIM115 (held until the block ends)
    except OSError as exc:
        raise StoreError(
            f"tracking store {uri}: cannot write in {path.parent} ({exc.strerror or exc}); "
            "pass a --tracking-uri in a folder you can write"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(uri: str, create: bool) -> bool:
    """Check the store at ``uri`` is usable; with ``create``, make (or repair) it under the lock.

    Returns whether a store exists afterwards. Without ``create`` a missing local store is not
    made (reading never writes) and a damaged one is only reported.
    """
    kind = check_uri(uri)
    if kind == "server":
        bound_http_retries()
        check_server(uri)
        return True
    if kind == "database":
        bound_http_retries()
        error = _try_open(uri)
        if error is not None:
            _raise_unopenable(uri, error)
        return True
    path = sqlite_path(uri)
    assert path is not None
    try:
        path.exists()
    except OSError as exc:  # a name too long, say
        raise StoreError(
            f"tracking store {uri}: {exc.strerror or exc}; pass another --tracking-uri"
        ) from None
    if path.exists() and not path.is_file():
        raise StoreError(f"tracking store {uri}: {path} is not a file; pass another --tracking-uri")
    if not create:
        if not path.exists():
            return False
        if _journal(path).exists():
            with store_lock(uri):
                _roll_back(path)
        error = _inspect(path, uri)
        if error is not None:
            _raise_unopenable(uri, error, hint_rerun=_runs_in(path) == 0)
        return True
    with store_lock(uri):
        _roll_back(path)
        error = _inspect(path, uri)
        if error is None:
            return True
        if _runs_in(path) != 0:
            _raise_unopenable(uri, error)
        moved = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(moved)
        _forget_cached_store(uri)
        warnings.warn(
            f"tracking store {uri} could not be opened ({first_line(error)}) and held no runs "
            f"(a creation cut short); moved it to {moved} and made a fresh one",
            StoreRepairedWarning,
            stacklevel=2,
        )
        error = _try_open(uri)
        if error is not None:
            _raise_unopenable(uri, error)
    return True


def _journal(path: Path) -> Path:
    return path.with_name(path.name + "-journal")


def _roll_back(path: Path) -> None:
    """Let SQLite recover the file as its next writer would: a process killed inside a write
    transaction leaves a *hot* journal, which only a read-write open rolls back (a read-only
    one refuses the file). Call under the store's lock; a file that cannot be opened read-write
    is left to the checks that follow."""
    if not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.Error:
        return


def _inspect(path: Path, uri: str) -> Exception | None:
    """Why the sqlite store at ``path`` cannot be used, or None: a creation cut short, damaged
    pages, or an error MLflow meets opening it."""
    return _half_made(path) or _damaged_pages(path) or _try_open(uri)


def _damaged_pages(path: Path) -> Exception | None:
    """SQLite's own quick integrity check (a fraction of a second for a 40 MB store): a file
    with overwritten pages can open and answer some queries, then lose runs later."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = [row[0] for row in db.execute("pragma quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        return exc
    if found != ["ok"]:
        lines = [line for row in found for line in row.splitlines() if not line.startswith("***")]
        return RuntimeError(f"its pages fail SQLite's integrity check: {'; '.join(lines)}")
    return None


def _half_made(path: Path) -> Exception | None:
    """What shows, without opening it through MLflow (which would migrate it), that a sqlite
    file's schema creation was cut short: no schema version, or alembic's temporary tables."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master")}
            if not tables:
                return None  # an empty database: MLflow creates the schema
            leftovers = sorted(name for name in tables if name.startswith("_alembic_tmp_"))
            if leftovers:
                return RuntimeError(f"a migration was cut short: table {leftovers[0]} is left")
            if "alembic_version" not in tables:
                return RuntimeError("it has tables but no schema version")
            if db.execute("select count(*) from alembic_version").fetchone()[0] != 1:
                return RuntimeError("its schema version is missing")
    except sqlite3.DatabaseError as exc:
        return exc
    return None


def _try_open(uri: str) -> Exception | None:
    """Open the store as MLflow does (creating or migrating its schema); the error, if any."""
    from mlflow import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        _forget_cached_store(uri)
        return exc
    return None


def _forget_cached_store(uri: str) -> None:
    """MLflow keeps one database engine per URI; drop it, so the next open sees the file that
    is there now (not a moved or broken one)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    for key in [key for key in engines if key == uri]:
        engines.pop(key).dispose()


def _runs_in(path: Path) -> int | None:
    """How many runs a sqlite file holds: 0 when it has no runs table (or is not a database),
    None when it cannot be read at all."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master")}
            if "runs" not in tables:
                return 0
            return int(db.execute("select count(*) from runs").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0 if path.stat().st_size == 0 else None


def _raise_unopenable(uri: str, error: Exception | None, hint_rerun: bool = False) -> bool:
    detail = f" ({first_line(error)})" if error is not None else ""
    if hint_rerun:
        fix = "it holds no runs: `growbench run` will move it aside and make a fresh one"
    else:
        path = sqlite_path(uri)
        pages = f" or `sqlite3 {path} .recover` (damaged pages)" if path else ""
        fix = (
            f"it was left as it is: back it up, then try `mlflow db upgrade {uri}` (an old "
            f"schema){pages}, or pass another --tracking-uri"
        )
    raise StoreError(f"tracking store {uri} cannot be opened{detail}; {fix}") from None


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return " ".join(text[0].split())[:200] if text else type(error).__name__
