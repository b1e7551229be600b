"""The MLflow adapter: the only module that imports mlflow.

Always an explicit `MlflowClient(tracking_uri=...)`, never the fluent, process-global API.
Every write is idempotent: runs are found by their `mlfork.run` tag, metrics carry
deterministic timestamps (a metric point is keyed by key, timestamp, step and value), params
are written once, and tags are plain overwrites.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfork import faults, naming
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


@dataclass
class RunWrite:
    """Everything mlfork writes about one run in one go (JSON-serialisable for the outbox)."""

    run: str
    experiment: str
    start_time: int
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    # metric points: [key, value, timestamp_ms, step]
    metrics: list[list[Any]] = field(default_factory=list)
    status: str | None = None  # RUNNING, FINISHED, FAILED, KILLED
    end_time: int | None = None
    deleted: bool = False  # the run was removed (`mlfork rm`): mark its MLflow run deleted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunWrite:
        return cls(**data)


class Tracker:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self._runs: dict[tuple[str, str], str] = {}
        self.warnings: list[str] = []  # what a write had to say (a value MLflow would cut)

    @property
    def client(self) -> Any:
        if self._client is None:
            check_uri(self.uri)
            db = sqlite_path(self.uri)
            if db is not None:
                path = Path(db)
                path.parent.mkdir(parents=True, exist_ok=True)
                check_sqlite_store(path)
                if not path.exists():
                    _create_sqlite_store(path)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:  # the store is unreachable, or refuses this write
            message = (
                f"the tracking store {redact_uri(self.uri)} could not {what}: {_reason(exc)}"
            )
            if getattr(exc, "error_code", None) in REFUSALS:
                raise Undeliverable(message) from exc
            raise TrackingError(message) from exc

    def experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        exp = self._call("be read", self.client.get_experiment_by_name, name)
        if exp is None:
            # a training experiment: the MLflow 3 UI then opens on its runs, not on GenAI traces
            kwargs: dict[str, Any] = {"tags": {"mlflow.experimentKind": "custom_model_development"}}
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri[len("sqlite:///") :])
                kwargs["artifact_location"] = (db.parent / "artifacts").as_uri()
            try:
                exp_id = self._call("create an experiment", self.client.create_experiment,
                                    name, **kwargs)
            except TrackingError:  # another writer created it first, or the store is down
                exp = self._call("be read", self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def _candidates(self, experiment: str, run: str) -> list[Any]:
        """The active MLflow runs tagged as mlfork run `run`, the canonical one first: the
        oldest (start time, then id), so that every writer picks the same one."""
        exp_id = self.experiment_id(experiment)
        found = self._call(
            "be searched",
            self.client.search_runs,
            [exp_id],
            filter_string=f"tags.`{naming.TAG_RUN}` = '{run}'",
            max_results=1000,
        )
        return sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def find_run(self, experiment: str, run: str) -> str | None:
        key = (experiment, run)
        if key in self._runs:
            return self._runs[key]
        found = self._candidates(experiment, run)
        if not found:
            return None
        self._runs[key] = found[0].info.run_id
        return self._runs[key]

    def _find_or_create(self, w: RunWrite) -> str:
        """The MLflow run of `w.run`, created if there is none. Two writers racing (a sync
        during a run, two clones) may both create one: each then looks again, and all agree
        on the canonical one; a writer whose own run lost deletes it."""
        run_id = self.find_run(w.experiment, w.run)
        if run_id is not None:
            return run_id
        created = self._call(
            "create a run",
            self.client.create_run,
            self.experiment_id(w.experiment),
            start_time=w.start_time,
            tags={naming.TAG_RUN: w.run},
            run_name=w.run,
        )
        mine = created.info.run_id
        found = self._candidates(w.experiment, w.run)
        canonical = found[0].info.run_id if found else mine
        if canonical != mine:
            self._call("be written", self.client.delete_run, mine)
        self._runs[(w.experiment, w.run)] = canonical
        return str(canonical)

    def repair_duplicates(self, experiment: str) -> int:
        """Delete every non-canonical MLflow run of an mlfork run that has several (left by
        an older mlfork, or by writers racing); the number deleted."""
        exp_id = self.experiment_id(experiment)
        by_run: dict[str, list[Any]] = {}
        token = None
        while True:
            page = self._call(
                "be searched", self.client.search_runs, [exp_id],
                filter_string=f"tags.`{naming.TAG_RUN}` != ''", max_results=1000,
                page_token=token,
            )
            for r in page:
                by_run.setdefault(r.data.tags.get(naming.TAG_RUN), []).append(r)
            token = page.token
            if not token:
                break
        deleted = 0
        for name, found in by_run.items():
            found.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
            for extra in found[1:]:
                self._call("be written", self.client.delete_run, extra.info.run_id)
                deleted += 1
            if name and found:
                self._runs[(experiment, name)] = found[0].info.run_id
        return deleted

    def run_ids(self, experiment: str) -> dict[str, str]:
        """mlfork run name -> MLflow run id, for every mlfork run of the experiment."""
        exp_id = self.experiment_id(experiment)
        out: dict[str, str] = {}
        token = None
        while True:
            page = self._call(
                "be searched",
                self.client.search_runs,
                [exp_id],
                filter_string=f"tags.`{naming.TAG_RUN}` != ''",
                max_results=1000,
                page_token=token,
            )
            for r in page:
                name = r.data.tags.get(naming.TAG_RUN)
                if name:
                    out[name] = r.info.run_id
            token = page.token
            if not token:
                break
        for name, rid in out.items():
            self._runs[(experiment, name)] = rid
        return out

    def write(self, w: RunWrite) -> str:
        """Apply one RunWrite; idempotent. Returns the MLflow run id."""
        from mlflow.entities import Metric, Param, RunTag

        if w.deleted:
            for found in self._candidates(w.experiment, w.run):
                self._call("be written", self.client.delete_run, found.info.run_id)
            self._runs.pop((w.experiment, w.run), None)
            return ""
        run_id = self._find_or_create(w)
        faults.point("mirror.created")
        tag_values = dict(w.tags)
        parent = tag_values.get(naming.TAG_PARENT_RUN)
        if parent and naming.TAG_MLFLOW_PARENT not in tag_values:
            parent_id = self.find_run(w.experiment, parent)
            if parent_id is not None:  # the UI nests the fork under its parent
                tag_values[naming.TAG_MLFLOW_PARENT] = parent_id
        tag_values = self._keep_full(run_id, w.run, "tag", tag_values, TAG_VALUE_LIMIT)
        param_values = self._keep_full(run_id, w.run, "param", dict(w.params), PARAM_VALUE_LIMIT)
        tags = [RunTag(k, _clip(v, TAG_VALUE_LIMIT)) for k, v in sorted(tag_values.items())]
        params = [Param(k, _clip(v, PARAM_VALUE_LIMIT)) for k, v in sorted(param_values.items())]
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in w.metrics
                   if key_problem(k) is None]
        for i in range(0, len(tags), MAX_TAGS):
            self._call("be written", self.client.log_batch, run_id, tags=tags[i : i + MAX_TAGS])
        faults.point("mirror.tags")
        if params:
            existing = self._call("be read", self.client.get_run, run_id).data.params
            params = [p for p in params if p.key not in existing]
        for i in range(0, len(params), MAX_PARAMS):
            self._call(
                "be written", self.client.log_batch, run_id, params=params[i : i + MAX_PARAMS]
            )
        for i in range(0, len(metrics), MAX_METRICS):
            self._call(
                "be written",
                self.client.log_batch,
                run_id,
                metrics=metrics[i : i + MAX_METRICS],
            )
        faults.point("mirror.metrics")
        if w.status in ("RUNNING", "SCHEDULED"):
            self._call("be written", self.client.update_run, run_id, status=w.status)
        elif w.status is not None:
            self._call("be written", self._terminate, run_id, w.status, w.end_time)
        return str(run_id)

    def _terminate(self, run_id: str, status: str, end_time: int | None) -> None:
        """`set_terminated`, without the "View run ... at" lines MLflow prints on stdout
        for a server (stdout holds only data: `--json` must stay JSON)."""
        from mlflow.entities import RunStatus

        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if store is None or not hasattr(store, "update_run_info"):
            with contextlib.redirect_stdout(None):
                self.client.set_terminated(run_id, status, end_time=end_time)
            return
        store.update_run_info(run_id, run_status=RunStatus.from_string(status),
                              end_time=end_time, run_name=None)

    def _keep_full(
        self, run_id: str, run: str, kind: str, values: dict[str, str], limit: int
    ) -> dict[str, str]:
        """Values MLflow takes: keys it refuses are left out, and a value longer than it
        keeps is clipped there with the whole value kept as a run artifact (both said in
        `warnings`). Git holds every value in full either way."""
        out: dict[str, str] = {}
        for key, value in values.items():
            problem = key_problem(key)
            if problem is not None:
                self.warnings.append(
                    f"the {kind} key {key!r} of run '{run}' was not sent to MLflow: {problem}"
                    " (git has it)"
                )
                continue
            if len(value) > limit:
                name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in key)
                artifact = f"{FULL_VALUES}/{kind}s/{name}.txt"
                self._call("be written", self.client.log_text, run_id, value, artifact)
                self.warnings.append(
                    f"the {kind} {key!r} of run '{run}' has {len(value)} characters, more than"
                    f" MLflow keeps ({limit}): it is cut there, and whole in the run's artifact"
                    f" {artifact}"
                )
            out[key] = value
        return out

    def delete_experiment_runs(self, experiment: str) -> int:
        """Delete every mlfork run of the experiment (for `mlfork sync --rebuild`)."""
        ids = self.run_ids(experiment)
        for rid in ids.values():
            self._call("be written", self.client.delete_run, rid)
        self._runs = {k: v for k, v in self._runs.items() if k[0] != experiment}
        return len(ids)


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


def _create_sqlite_store(db: Path) -> None:
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


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
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

INDEX_TAGS = (
    naming.TAG_RUN,
    naming.TAG_LINEAGE,
    naming.TAG_INHERITED_UNTIL,
    naming.TAG_PARENT_RUN,
    naming.TAG_FORK_ITERATION,
    naming.TAG_FORK_STEP,
)


@dataclass(frozen=True)
class IndexedRun:
    """One mlfork run as the tracking store indexes it: its MLflow id, its lineage tags
    (INDEX_TAGS only) and the keys of the metrics it logged."""

    run_id: str
    tags: dict[str, str]
    metric_keys: frozenset[str]


@dataclass(frozen=True)
class PointSegment:
    """The points of one MLflow run with first <= step <= last (None: unbounded)."""

    run_id: str
    first: int | None = None
    last: int | None = None


def sqlite_path(uri: str) -> str | None:
    """The database file of a plain `sqlite:///PATH` URI (None for anything else)."""
    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    path = uri[len("sqlite:///") :]
    return path or None


class HistoryReader:
    """Reads the mlfork runs of an experiment and their metric points in bulk.

    `fast=False` forces the public API path even for a sqlite store (the path a server
    takes). Both paths return the same rows.
    """

    def __init__(self, uri: str, fast: bool = True) -> None:
        self.uri = uri
        self.db = sqlite_path(uri) if fast else None
        self._tracker: Tracker | None = None
        self._keys: dict[str, frozenset[str]] = {}
        self.used: str = "sql" if self.db else "api"

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri)
        return self._tracker

    # -- runs ---------------------------------------------------------------------------------

    def runs(self, experiment: str) -> dict[str, IndexedRun]:
        """mlfork run name -> IndexedRun, for the active runs of the experiment ({} when the
        store or the experiment does not exist yet)."""
        if self.db is not None:
            if not Path(self.db).exists():
                return {}
            try:
                return self._runs_sql(experiment)
            except Exception:  # sqlite3.Error: another schema, a locked file: use the API
                self.db, self.used = None, "api"
        return self._runs_api(experiment)

    def _connect(self) -> Any:
        import sqlite3
        from urllib.parse import quote

        path = quote(str(Path(self.db or "").resolve()))
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def _runs_sql(self, experiment: str) -> dict[str, IndexedRun]:
        marks = ",".join("?" * len(INDEX_TAGS))
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT r.run_uuid, t.key, t.value FROM runs r"
                " JOIN experiments e ON e.experiment_id = r.experiment_id"
                " JOIN tags t ON t.run_uuid = r.run_uuid"
                f" WHERE e.name = ? AND r.lifecycle_stage = 'active' AND t.key IN ({marks})"
                " ORDER BY r.start_time DESC, r.run_uuid",
                (experiment, *INDEX_TAGS),
            ).fetchall()
            tags: dict[str, dict[str, str]] = {}
            for run_id, key, value in rows:
                tags.setdefault(run_id, {})[key] = value
            keys: dict[str, set[str]] = {}
            ids = [rid for rid, t in tags.items() if t.get(naming.TAG_RUN)]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for run_id, key in con.execute(
                    "SELECT run_uuid, key FROM latest_metrics"
                    f" WHERE run_uuid IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    keys.setdefault(run_id, set()).add(key)
        finally:
            con.close()
        out: dict[str, IndexedRun] = {}
        for run_id in ids:  # newest first: a duplicate name keeps the newest run
            name = tags[run_id][naming.TAG_RUN]
            if name not in out:
                out[name] = IndexedRun(run_id, tags[run_id], frozenset(keys.get(run_id, ())))
                self._keys[run_id] = out[name].metric_keys
        return out

    def _runs_api(self, experiment: str) -> dict[str, IndexedRun]:
        client = self.tracker.client
        exp = self.tracker._call("be read", client.get_experiment_by_name, experiment)
        if exp is None:
            return {}
        out: dict[str, IndexedRun] = {}
        token = None
        while True:
            page = self.tracker._call(
                "be searched",
                client.search_runs,
                [exp.experiment_id],
                filter_string=f"tags.`{naming.TAG_RUN}` != ''",
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            for r in page:
                name = r.data.tags.get(naming.TAG_RUN)
                if name and name not in out:
                    tags = {k: v for k, v in r.data.tags.items() if k in INDEX_TAGS}
                    out[name] = IndexedRun(r.info.run_id, tags, frozenset(r.data.metrics))
                    self._keys[r.info.run_id] = out[name].metric_keys
            token = page.token
            if not token:
                break
        return out

    # -- points -------------------------------------------------------------------------------

    def points(
        self, segments: list[PointSegment], keys: list[str] | None = None, *,
        stamps: bool = False,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Every point of every segment: (metric keys, rows), each row (segment index,
        index of its key in the keys, step, value) plus its timestamp with `stamps`, in no
        particular order. `keys` None means every metric; the keys come back sorted. A NaN
        value is None. A step logged twice comes twice: ask again with `stamps` to keep the
        newest (a rare case: mlfork writes idempotently)."""
        if not segments:
            return sorted(keys or []), []
        if self.db is not None:
            try:
                return self._points_sql(segments, keys, stamps)
            except Exception:  # sqlite3.Error: fall back to the API path
                self.db, self.used = None, "api"
        return self._points_api(segments, keys, stamps)

    def _points_sql(
        self, segments: list[PointSegment], keys: list[str] | None, stamps: bool
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        con = self._connect()
        try:
            if keys is None:
                ids = sorted({s.run_id for s in segments})
                found: set[str] = set()
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    found.update(key for (key,) in con.execute(
                        "SELECT DISTINCT key FROM latest_metrics"
                        f" WHERE run_uuid IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ))
                keys = list(found)
            keys = sorted(set(keys))
            if not keys:
                return keys, []
            # keys as small integer codes (no string per row), joined on the index
            # (run_uuid, key, step) so that SQLite seeks each segment's step range
            key_values = ",".join("(?,?)" for _ in keys)
            key_params = [x for code, key in enumerate(keys) for x in (code, key)]
            out: list[tuple[Any, ...]] = []
            for start in range(0, len(segments), 200):  # 4 variables a segment
                part = segments[start : start + 200]
                seg_values = ",".join("(?,?,?,?)" for _ in part)
                params: list[Any] = []
                for i, s in enumerate(part, start):
                    params += [i, s.run_id, -(2**62) if s.first is None else s.first,
                               2**62 if s.last is None else s.last]
                out += con.execute(
                    f"WITH seg(i, run_uuid, lo, hi) AS (VALUES {seg_values}),"
                    f" k(code, key) AS (VALUES {key_values})"
                    " SELECT seg.i, k.code, m.step,"
                    " CASE WHEN m.is_nan THEN NULL ELSE m.value END"
                    + (", m.timestamp" if stamps else "")
                    + " FROM seg, k JOIN metrics m ON m.run_uuid = seg.run_uuid"
                    " AND m.key = k.key AND m.step BETWEEN seg.lo AND seg.hi",
                    params + key_params,
                ).fetchall()
        finally:
            con.close()
        return keys, out

    def _points_api(
        self, segments: list[PointSegment], keys: list[str] | None, stamps: bool
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        client = self.tracker.client
        wanted = set(keys) if keys is not None else None
        runs = sorted({s.run_id for s in segments})
        run_keys: dict[str, list[str]] = {}
        for run_id in runs:  # the keys come with runs(); get_run only for a run not listed
            logged = self._keys.get(run_id)
            if logged is None:
                logged = frozenset(
                    self.tracker._call("be read", client.get_run, run_id).data.metrics
                )
            run_keys[run_id] = sorted(k for k in logged if wanted is None or k in wanted)
        jobs = [(run_id, key) for run_id in runs for key in run_keys[run_id]]

        def history(job: tuple[str, str]) -> list[Any]:
            return list(self.tracker._call("be read", client.get_metric_history, *job))

        if self.uri.startswith(("http://", "https://", "databricks")) and len(jobs) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:  # a server: overlap round trips
                results = list(pool.map(history, jobs))
        else:
            results = [history(job) for job in jobs]
        names = sorted(set(keys) if keys is not None else {k for _, k in jobs})
        code = {key: i for i, key in enumerate(names)}
        by_run: dict[str, list[tuple[str, list[Any]]]] = {}
        for (run_id, key), found in zip(jobs, results, strict=True):
            by_run.setdefault(run_id, []).append((key, found))
        out: list[tuple[Any, ...]] = []
        for i, seg in enumerate(segments):
            lo = -(2**62) if seg.first is None else seg.first
            hi = 2**62 if seg.last is None else seg.last
            for key, found in by_run.get(seg.run_id, []):
                c = code[key]
                for m in found:
                    if lo <= m.step <= hi:
                        value = None if m.value != m.value else m.value
                        out.append((i, c, m.step, value, m.timestamp) if stamps
                                   else (i, c, m.step, value))
        return names, out
