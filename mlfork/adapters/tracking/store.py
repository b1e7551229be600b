"""The tracking store: its URI, checks of a store and of the keys and values it takes.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from mlfork import naming
from mlfork.errors import TrackingError

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
PARAM_VALUE_LIMIT = 6000
TAG_VALUE_LIMIT = 8000
KEY_LIMIT = 250
_KEY = re.compile(r"^[/\w.\- :]+$")  # the keys MLflow takes for tags, params and metrics
FULL_VALUES = "mlfork/full-values"  # the artifact folder with values MLflow would cut


class Undeliverable(TrackingError):
    """The store refuses this write for what it is (an invalid key or value), not because
    it is unreachable: retrying cannot help."""


class BrokenStore(TrackingError):
    """The embedded store's file is not a database MLflow can open."""

    def __init__(self, db: Path, reason: str) -> None:
        super().__init__(
            f"the embedded tracking store {db} is broken ({reason}): run 'mlfork sync"
            " --rebuild' to move it aside and rebuild it from git"
        )
        self.db = db


def key_problem(key: str) -> str | None:
    """Why MLflow would refuse `key` as a tag, param or metric name (None: it takes it)."""
    if not key:
        return "it is empty"
    if len(key) > KEY_LIMIT:
        return f"it is longer than {KEY_LIMIT} characters"
    if not _KEY.match(key):
        return "it may only hold letters, digits and _ - . / : and spaces"
    if ".." in key.split("/") or key.startswith("/"):
        return "it may not be or hold a '..' path or start with '/'"
    return None


def check_sqlite_store(db: Path) -> None:
    """Raise BrokenStore, at once (no retries), if `db` exists and is not a SQLite
    database with MLflow's tables (a folder, a truncated or foreign file)."""
    import sqlite3

    if not db.exists():
        return
    if db.is_dir():
        raise BrokenStore(db, "it is a folder")
    try:
        with open(db, "rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise BrokenStore(db, exc.strerror or str(exc)) from exc
    if header != b"SQLite format 3\x00":
        raise BrokenStore(db, "not a SQLite database")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            con.execute("SELECT count(*) FROM experiments").fetchone()
            con.execute("SELECT count(*) FROM runs").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise BrokenStore(db, str(exc).splitlines()[0] if str(exc) else "unreadable") from exc


def default_uri(root: Path, configured: str | None = None) -> str:
    """`MLFLOW_TRACKING_URI`, then the policy's `tracking_uri`, then the embedded store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return "sqlite:///" + str((root / naming.TRACKING_DB).resolve())


def redact_uri(uri: str) -> str:
    """A tracking URI without credentials (`https://user:token@host` -> `https://host`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


REFUSALS = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE")


def check_uri(uri: str) -> None:
    """A tracking URI MLflow can use, or TrackingError saying what is wrong with it (an
    unknown scheme, the file store MLflow 3 refuses)."""
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql") or (
        scheme.startswith(("postgresql+", "mysql+", "mssql+", "databricks-"))
    ):
        return
    if scheme == "file" or (not scheme and uri):
        raise TrackingError(
            f"tracking URI {redact_uri(uri)} is a plain file store, which MLflow 3 no longer"
            " writes: use 'sqlite:///PATH/mlflow.db', a server's http(s):// address, or unset"
            " MLFLOW_TRACKING_URI for the project's embedded store"
        )
    raise TrackingError(
        f"tracking URI {redact_uri(uri)} has no scheme MLflow knows ('{scheme}'): use"
        " http(s)://HOST:PORT, sqlite:///PATH, or unset MLFLOW_TRACKING_URI"
    )


def create_sqlite_store(db: Path) -> None:
    """MLflow creates a store's tables in many steps; a process killed meanwhile leaves a
    file that no later client can open. Create it aside, then link it into place."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (db.parent / "artifacts").as_uri())
        store.engine.dispose()
        with contextlib.suppress(FileExistsError):  # never replace another process's store
            os.link(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def reason(exc: BaseException) -> str:
    """A short reason: MLflow's HTTP errors embed whole urllib3 tracebacks."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No such file or directory", "unable to open database file",
                   "attempt to write a readonly database", "database or disk is full",
                   "database is locked"):
        if marker in text:
            return marker.lower()
    return text if len(text) <= 160 else text[:157] + "..."


# -- reading metric histories for compare (mlfork metrics, plot, diff, report) -------------------
#
# Two paths that return the same rows:
# - the public API (MlflowClient.search_runs, then get_metric_history per run and key): works
#   against any store, a server included;
# - a fast path for the embedded `sqlite:///` store: read-only SQL (`file:...?mode=ro`, the
#   stdlib sqlite3, no mlflow import) over MLflow's own schema, checked against mlflow 3.x:
#     experiments(experiment_id, name)
#     runs(run_uuid, experiment_id, lifecycle_stage, start_time)
#     tags(key, value, run_uuid)
#     latest_metrics(key, run_uuid)
#     metrics(key, value, timestamp, run_uuid, step, is_nan), index (run_uuid, key, step)
#   One query reads the lineage tags of the experiment's active runs (and one their metric
#   keys), one the metric points of every (run, step range) segment at once, seeking the
#   (run_uuid, key, step) index. If the schema ever differs (sqlite3.Error, which includes
#   "too many SQL variables" on an old SQLite), the reader falls back to the API path: a
#   schema change costs speed, never correctness.


def sqlite_path(uri: str) -> str | None:
    """The database file of a plain `sqlite:///PATH` URI (None for anything else)."""
    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    path = uri[len("sqlite:///") :]
    return path or None


