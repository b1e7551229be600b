"""`mlfork sync`: deliver the outbox, then make the tracking store agree with git."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..adapters.tracking import Tracker, redact_uri
from . import lineage, track
from .project import Project


@dataclass
class SyncResult:
    uri: str
    delivered: int = 0
    runs: list[str] = field(default_factory=list)
    deleted: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def sync(path: str | os.PathLike[str] = ".", rebuild: bool = False) -> SyncResult:
    """Idempotent: a second call writes nothing new. `rebuild` deletes the project's runs
    from the store first and recreates every run, tag and metric from git alone."""
    project = Project.open(path, require_dvc=False)
    names = lineage.run_names(project)
    head = project.git.head_commit()
    uri = track.tracking_uri(project, head)
    tracker = Tracker(uri)
    result = SyncResult(uri=redact_uri(uri))
    result.delivered = track.flush(project, tracker)
    writes = [track.full_write(project, name) for name in _parents_first(project, names)]
    if rebuild:
        for experiment in sorted({w.experiment for w in writes}):
            result.deleted += tracker.delete_experiment_runs(experiment)
    for write in writes:
        tracker.write(write)
        result.runs.append(write.run)
    return result


def _parents_first(project: Project, names: list[str]) -> list[str]:
    """Order runs so a parent is written before its forks (they point at its MLflow id)."""
    depth = {}
    for name in names:
        rec = lineage.record(project, name)
        depth[name] = len(track.lineage_chain(project, rec))
    return sorted(names, key=lambda n: (depth[n], n))
