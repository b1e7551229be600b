"""Writes to the tracking store: runs found or created by their `mlfork.run` tag (a key that
cannot duplicate under concurrency; duplicates left by older versions are repaired), metric
points with deterministic timestamps, params written once, tags as plain overwrites; values
MLflow would cut are kept whole as artifacts."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mlfork import faults, naming
from mlfork.adapters.tracking.store import (
    FULL_VALUES,
    MAX_METRICS,
    MAX_PARAMS,
    MAX_TAGS,
    PARAM_VALUE_LIMIT,
    REFUSALS,
    TAG_VALUE_LIMIT,
    Undeliverable,
    check_sqlite_store,
    check_uri,
    clip,
    create_sqlite_store,
    key_problem,
    reason,
    redact_uri,
    sqlite_path,
)
from mlfork.errors import TrackingError


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
    # an outbox entry that says only "bring this run up to date from git": whoever delivers
    # it computes the write then (a fork's write costs what its history holds: not the fork's)
    refresh: bool = False
    # the write holds everything git has up to a commit: recorded with the run (TAG_MIRRORED)
    # so that the next write sends only what comes after, and an up-to-date run is skipped
    mirrored: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunWrite:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Indexed:
    """One mlfork run as the store has it: its MLflow id, status and tags."""

    run_id: str
    status: str
    tags: dict[str, str]

    @property
    def mirrored(self) -> dict[str, Any] | None:
        """The watermark of the last complete write (None: there was none, or unreadable)."""
        try:
            mark = json.loads(self.tags.get(naming.TAG_MIRRORED, ""))
        except ValueError:
            return None
        return mark if isinstance(mark, dict) else None


class Tracker:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self._runs: dict[tuple[str, str], str] = {}
        self._known: dict[tuple[str, str], Indexed] = {}
        # experiments read whole by `index` (or emptied by a rebuild): a run they lack is
        # not searched for again; creating it still looks (`_find_or_create`)
        self._indexed: set[str] = set()
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
                    create_sqlite_store(path)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:  # the store is unreachable, or refuses this write
            message = (
                f"the tracking store {redact_uri(self.uri)} could not {what}: {reason(exc)}"
            )
            if getattr(exc, "error_code", None) in REFUSALS:
                raise Undeliverable(message) from exc
            raise TrackingError(message) from exc

    def experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        exp = self.call("be read", self.client.get_experiment_by_name, name)
        if exp is None:
            # a training experiment: the MLflow 3 UI then opens on its runs, not on GenAI traces
            kwargs: dict[str, Any] = {"tags": {"mlflow.experimentKind": "custom_model_development"}}
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri[len("sqlite:///") :])
                kwargs["artifact_location"] = (db.parent / "artifacts").as_uri()
            try:
                exp_id = self.call("create an experiment", self.client.create_experiment,
                                    name, **kwargs)
            except TrackingError:  # another writer created it first, or the store is down
                exp = self.call("be read", self.client.get_experiment_by_name, name)
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
        found = self.call(
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
        if experiment in self._indexed:
            return None
        found = self._candidates(experiment, run)
        if not found:
            return None
        self._remember(experiment, run, found[0])
        return self._runs[key]

    def _remember(self, experiment: str, run: str, found: Any) -> None:
        self._runs[(experiment, run)] = found.info.run_id
        self._known[(experiment, run)] = Indexed(
            found.info.run_id, found.info.status, dict(found.data.tags)
        )

    def known(self, experiment: str, run: str) -> Indexed | None:
        """The store's view of `run` (its status and tags), as last read; None if absent."""
        if (experiment, run) not in self._known and self.find_run(experiment, run) is None:
            return None
        return self._known.get((experiment, run))

    def index(self, experiment: str) -> dict[str, list[Any]]:
        """Every active MLflow run of the experiment tagged as an mlfork run, by run name,
        canonical first (the oldest); one paged search. The canonical ones are remembered."""
        exp_id = self.experiment_id(experiment)
        by_run: dict[str, list[Any]] = {}
        token = None
        while True:
            page = self.call(
                "be searched", self.client.search_runs, [exp_id],
                filter_string=f"tags.`{naming.TAG_RUN}` != ''", max_results=1000,
                page_token=token,
            )
            for r in page:
                name = r.data.tags.get(naming.TAG_RUN)
                if name:
                    by_run.setdefault(name, []).append(r)
            token = page.token
            if not token:
                break
        for name, found in by_run.items():
            found.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
            self._remember(experiment, name, found[0])
        self._indexed.add(experiment)
        return by_run

    def _find_or_create(self, w: RunWrite) -> tuple[str, bool]:
        """The MLflow run of `w.run`, created if there is none, and whether it was created
        now. Two writers racing (a sync during a run, two clones) may both create one: on
        an embedded store creations are serialized; against a server each writer looks
        again, and all agree on the canonical one (a writer whose own run lost deletes
        it)."""
        run_id = self.find_run(w.experiment, w.run)
        if run_id is not None:
            return run_id, False
        with self._creating():  # one creator at a time on this machine's embedded store
            found = self._candidates(w.experiment, w.run)
            if found:  # another process created it meanwhile
                self._remember(w.experiment, w.run, found[0])
                return str(found[0].info.run_id), False
            created = self.call(
                "create a run",
                self.client.create_run,
                self.experiment_id(w.experiment),
                start_time=w.start_time,
                tags={naming.TAG_RUN: w.run},
                run_name=w.run,
            )
        mine = created.info.run_id
        canonical = mine
        if sqlite_path(self.uri) is None:  # a server's writers are not serialized here
            found = self._candidates(w.experiment, w.run)
            canonical = found[0].info.run_id if found else mine
            if canonical != mine:
                self.call("be written", self.client.delete_run, mine)
        self._runs[(w.experiment, w.run)] = canonical
        self._known.pop((w.experiment, w.run), None)
        return str(canonical), canonical == mine

    @contextlib.contextmanager
    def _creating(self) -> Any:
        """Serialize run creation among the processes writing one embedded store (the
        jobs of a sweep, a background delivery): two that both found no run would each
        create one, and a writer that looked before the other's existed keeps its own. A
        tracking server's writers cannot be serialized here: `sync` repairs what they
        leave."""
        db = sqlite_path(self.uri)
        if db is None:
            yield
            return
        import fcntl

        with open(Path(db).with_name(Path(db).name + ".create-lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def repair_duplicates(self, experiment: str) -> int:
        """Delete every non-canonical MLflow run of an mlfork run that has several (left by
        an older mlfork, or by writers racing); the number deleted."""
        deleted = 0
        for found in self.index(experiment).values():
            for extra in found[1:]:
                self.call("be written", self.client.delete_run, extra.info.run_id)
                deleted += 1
        return deleted

    def write(self, w: RunWrite) -> str:
        """Apply one RunWrite; idempotent. Returns the MLflow run id."""
        from mlflow.entities import Metric, Param, RunTag

        if w.deleted:
            for found in self._candidates(w.experiment, w.run):
                self.call("be written", self.client.delete_run, found.info.run_id)
            self._runs.pop((w.experiment, w.run), None)
            self._known.pop((w.experiment, w.run), None)
            return ""
        run_id, created = self._find_or_create(w)
        faults.point("mirror.created")
        tag_values = dict(w.tags)
        parent = tag_values.get(naming.TAG_PARENT_RUN)
        if parent and naming.TAG_MLFLOW_PARENT not in tag_values:
            parent_id = self.find_run(w.experiment, parent)
            if parent_id is not None:  # the UI nests the fork under its parent
                tag_values[naming.TAG_MLFLOW_PARENT] = parent_id
        tag_values = self._keep_full(run_id, w.run, "tag", tag_values, TAG_VALUE_LIMIT)
        param_values = self._keep_full(run_id, w.run, "param", dict(w.params), PARAM_VALUE_LIMIT)
        tags = [RunTag(k, clip(v, TAG_VALUE_LIMIT)) for k, v in sorted(tag_values.items())]
        params = [Param(k, clip(v, PARAM_VALUE_LIMIT)) for k, v in sorted(param_values.items())]
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in w.metrics
                   if key_problem(k) is None]
        if params and not created:  # a param, once logged, cannot be logged again
            existing = self.call("be read", self.client.get_run, run_id).data.params
            params = [p for p in params if p.key not in existing]
        # tags and params together (MLflow takes up to 100 of each a batch): one batch for
        # most runs
        size = min(MAX_TAGS, MAX_PARAMS)
        for i in range(0, max(len(tags), len(params)), size):
            self.call("be written", self.client.log_batch, run_id, tags=tags[i : i + size],
                      params=params[i : i + size])
        faults.point("mirror.tags")
        if metrics and self._insert_points(run_id, metrics):
            metrics = []  # an embedded store's: written in one transaction
        for i in range(0, len(metrics), MAX_METRICS):
            self.call(
                "be written",
                self.client.log_batch,
                run_id,
                metrics=metrics[i : i + MAX_METRICS],
            )
        faults.point("mirror.metrics")
        if w.status in ("RUNNING", "SCHEDULED"):
            self.call("be written", self.client.update_run, run_id, status=w.status)
        elif w.status is not None:
            self.call("be written", self._terminate, run_id, w.status, w.end_time)
        if w.mirrored is not None:  # last: a write cut short leaves the old watermark
            mark = json.dumps(w.mirrored, sort_keys=True, separators=(",", ":"))
            self.call("be written", self.client.set_tag, run_id, naming.TAG_MIRRORED, mark)
            self._known[(w.experiment, w.run)] = Indexed(
                run_id, w.status or "", {**tag_values, naming.TAG_MIRRORED: mark}
            )
        return str(run_id)

    def _insert_points(self, run_id: str, metrics: list[Any]) -> bool:
        """Many points into an embedded sqlite store in one transaction, as MLflow's own
        `log_batch` stores them (the `metrics` rows, `latest_metrics` moved on to the
        newest (step, timestamp, value) of each key): 100,000 per-step points in well under
        a second where log_batch takes seconds. Finite values only (MLflow encodes NaN and
        infinities; those go through log_batch). False, with nothing written, where the
        store is not a plain sqlite file or its schema differs: the caller uses log_batch."""
        import math
        import sqlite3

        db = sqlite_path(self.uri)
        if db is None or not all(math.isfinite(m.value) for m in metrics):
            return False
        rows = [(m.key, float(m.value), int(m.timestamp), run_id, int(m.step)) for m in metrics]
        latest: dict[str, tuple[int, int, float]] = {}
        for key, value, ts, _, step in rows:
            if key not in latest or (step, ts, value) > latest[key]:
                latest[key] = (step, ts, value)
        try:
            con = sqlite3.connect(db, timeout=60)
        except sqlite3.Error:
            return False
        try:
            with con:  # one transaction: all the points, or none
                con.execute("BEGIN IMMEDIATE")
                con.executemany(
                    "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step,"
                    " is_nan) VALUES (?, ?, ?, ?, ?, 0)", rows)
                con.executemany(
                    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                    " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET"
                    " value = excluded.value, timestamp = excluded.timestamp,"
                    " step = excluded.step, is_nan = 0"
                    " WHERE (excluded.step, excluded.timestamp, excluded.value)"
                    " > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
                    [(key, v, ts, step, run_id) for key, (step, ts, v) in latest.items()])
            return True
        except sqlite3.Error:
            return False
        finally:
            con.close()

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
                self.call("be written", self.client.log_text, run_id, value, artifact)
                self.warnings.append(
                    f"the {kind} {key!r} of run '{run}' has {len(value)} characters, more than"
                    f" MLflow keeps ({limit}): it is cut there, and whole in the run's artifact"
                    f" {artifact}"
                )
            out[key] = value
        return out

    def delete_experiment_runs(self, experiment: str) -> int:
        """Delete every mlfork run of the experiment, duplicates too (for `mlfork sync
        --rebuild`); the number of mlfork runs it had."""
        by_run = self.index(experiment)
        for found in by_run.values():
            for r in found:
                self.call("be written", self.client.delete_run, r.info.run_id)
        self._runs = {k: v for k, v in self._runs.items() if k[0] != experiment}
        self._known = {k: v for k, v in self._known.items() if k[0] != experiment}
        return len(by_run)
