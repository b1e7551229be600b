"""`mlfork ui`: the MLflow UI on 127.0.0.1, pointed at the project's tracking store."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlfork.adapters.tracking.store import redact_uri
from mlfork.errors import UsageError
from mlfork.ops.kernel.project import Project
from mlfork.ops.mirroring import mirror as track
from mlfork.ops.mirroring import outbox


@dataclass
class UiPlan:
    """What to start (argv, env additions) and where it will answer."""

    url: str
    uri: str
    open: str = ""  # the experiment's runs, in the UI's "Model training" view: what to open
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    experiment: str = ""
    waiting: int = 0  # tracking writes not delivered yet: the UI lags git by these

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


# The MLflow 3 UI shows GenAI or "Model training" navigation by its `workflowType` (the URL's
# query first, then what the browser last chose, GenAI by default); the experiment's
# `mlflow.experimentKind` tag (set when mlfork creates it) decides what its page shows.
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_link(url: str, experiment_id: str | None) -> str:
    """The address of an experiment's runs (or of the experiment list) in the UI at `url`,
    opening in its "Model training" view."""
    route = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{url.rstrip('/')}/#/{route}?{TRAINING_VIEW}"


def _experiment_id(uri: str, name: str) -> str | None:
    """The id of experiment `name` in the store, if it is there yet (read-only)."""
    try:
        if uri.startswith("sqlite:///"):
            import sqlite3

            db = Path(uri[len("sqlite:///"):])
            if not db.is_file():
                return None
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute("SELECT experiment_id FROM experiments WHERE name = ?"
                                  " AND lifecycle_stage = 'active'", (name,)).fetchone()
            finally:
                con.close()
            return str(row[0]) if row else None
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
        return found.experiment_id if found is not None else None
    except Exception:  # noqa: BLE001 - the link then opens the experiment list
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def plan(path: str | os.PathLike[str] = ".", port: int | None = None) -> UiPlan:
    """The `mlflow server` command for the project's store (only for a local store: a remote
    tracking server already has its UI, whose address is returned with an empty argv)."""
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    project = Project.open(path, require_dvc=False)
    head = project.git.head_commit()
    uri = track.tracking_uri(project, head)
    experiment = track.experiment_name(project, head) if head else project.home.name
    waiting = len(outbox.pending(project))
    if not uri.startswith("sqlite:///"):
        if uri.startswith(("http://", "https://")):
            shown = redact_uri(uri)
            return UiPlan(url=shown, uri=shown, experiment=experiment, waiting=waiting,
                          open=experiment_link(shown, _experiment_id(uri, experiment)))
        raise UsageError(f"cannot serve tracking URI {redact_uri(uri)}: use a sqlite:/// store")
    track.tracking_uri(project, head, write=True)  # the server writes the store
    port = port or 5000
    artifacts = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", artifacts,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]
    # the job runner is not needed to browse runs, and costs processes and memory
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    return UiPlan(url=url, uri=redact_uri(uri), argv=argv, env=env, experiment=experiment,
                  waiting=waiting, open=experiment_link(url, _experiment_id(uri, experiment)))
