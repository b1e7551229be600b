"""The MLflow adapter: the only module that imports mlflow.

Always an explicit `MlflowClient(tracking_uri=...)`, never the fluent, process-global API.
Every write is idempotent: runs are found by their `mlfork.run` tag, metrics carry
deterministic timestamps (a metric point is keyed by key, timestamp, step and value), params
are written once, and tags are plain overwrites.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import naming
from ..errors import TrackingError

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
PARAM_VALUE_LIMIT = 6000
TAG_VALUE_LIMIT = 8000


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

    @property
    def client(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any failure of the store is "unreachable" to the caller
            raise TrackingError(
                f"the tracking store {redact_uri(self.uri)} could not {what}: {_reason(exc)}"
            ) from exc

    def experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        exp = self._call("be read", self.client.get_experiment_by_name, name)
        if exp is None:
            kwargs: dict[str, Any] = {}
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri[len("sqlite:///") :])
                kwargs["artifact_location"] = (db.parent / "artifacts").as_uri()
            try:
                exp_id = self.client.create_experiment(name, **kwargs)
            except Exception:
                exp = self._call("be read", self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def find_run(self, experiment: str, run: str) -> str | None:
        key = (experiment, run)
        if key in self._runs:
            return self._runs[key]
        exp_id = self.experiment_id(experiment)
        found = self._call(
            "be searched",
            self.client.search_runs,
            [exp_id],
            filter_string=f"tags.`{naming.TAG_RUN}` = '{run}'",
            max_results=2,
        )
        if not found:
            return None
        self._runs[key] = found[0].info.run_id
        return self._runs[key]

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

        run_id = self.find_run(w.experiment, w.run)
        if run_id is None:
            exp_id = self.experiment_id(w.experiment)
            created = self._call(
                "create a run",
                self.client.create_run,
                exp_id,
                start_time=w.start_time,
                tags={naming.TAG_RUN: w.run},
                run_name=w.run,
            )
            run_id = created.info.run_id
            self._runs[(w.experiment, w.run)] = run_id
        tag_values = dict(w.tags)
        parent = tag_values.get(naming.TAG_PARENT_RUN)
        if parent and naming.TAG_MLFLOW_PARENT not in tag_values:
            parent_id = self.find_run(w.experiment, parent)
            if parent_id is not None:  # the UI nests the fork under its parent
                tag_values[naming.TAG_MLFLOW_PARENT] = parent_id
        tags = [RunTag(k, _clip(v, TAG_VALUE_LIMIT)) for k, v in sorted(tag_values.items())]
        params = [Param(k, _clip(v, PARAM_VALUE_LIMIT)) for k, v in sorted(w.params.items())]
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in w.metrics]
        for i in range(0, len(tags), MAX_TAGS):
            self._call("be written", self.client.log_batch, run_id, tags=tags[i : i + MAX_TAGS])
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
        if w.status in ("RUNNING", "SCHEDULED"):
            self._call("be written", self.client.update_run, run_id, status=w.status)
        elif w.status is not None:
            self._call(
                "be written", self.client.set_terminated, run_id, w.status, end_time=w.end_time
            )
        return str(run_id)

    def delete_experiment_runs(self, experiment: str) -> int:
        """Delete every mlfork run of the experiment (for `mlfork sync --rebuild`)."""
        ids = self.run_ids(experiment)
        for rid in ids.values():
            self._call("be written", self.client.delete_run, rid)
        self._runs = {k: v for k, v in self._runs.items() if k[0] != experiment}
        return len(ids)


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """A short reason: MLflow's HTTP errors embed whole urllib3 tracebacks."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No such file or directory", "unable to open database file"):
        if marker in text:
            return marker.lower()
    return text if len(text) <= 160 else text[:157] + "..."
