"""Runs and checkpoints, read from git alone (git is the truth, MLflow an index)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from .. import naming
from ..errors import AmbiguousRun, MlforkError, UnknownRun
from ..models import Checkpoint, Commit, RunInfo, RunRecord
from .project import Project


@dataclass(frozen=True)
class Position:
    """Where a run stands: the last committed (iteration, step), or None before iteration 0."""

    iteration: int | None
    step: str | None

    def next(self, stages: list[str], start_iteration: int = 0) -> tuple[int, int]:
        """(iteration, stage index) of the first stage not committed yet."""
        if self.iteration is None or self.step is None:
            return start_iteration, 0
        idx = stages.index(self.step) if self.step in stages else len(stages) - 1
        if idx + 1 >= len(stages):
            return self.iteration + 1, 0
        return self.iteration, idx + 1

    def done(self, stages: list[str]) -> int:
        """Iterations completed (all stages committed)."""
        if self.iteration is None:
            return 0
        return self.iteration + 1 if self.step == stages[-1] else self.iteration


def run_names(project: Project) -> list[str]:
    """Runs: `mlfork/<name>` branches whose tip has a run record (another branch under
    mlfork/ is not a run, though its name stays taken)."""
    names = []
    for branch in project.git.branches(naming.BRANCH_PREFIX):
        name = naming.run_from_ref(branch)
        tip_commit = project.git.resolve_branch(branch) if name else None
        if name and tip_commit and project.git.has_path(tip_commit, naming.RUN_RECORD):
            names.append(name)
    return names


def current_run(project: Project) -> str | None:
    branch = project.git.head_branch()
    return naming.run_from_ref(branch) if branch else None


def resolve_run(project: Project, ref: str | None) -> str:
    """A run name, its branch (`mlfork/x`, `refs/heads/mlfork/x`) or a unique prefix;
    None means the run checked out."""
    names = run_names(project)
    if ref is None:
        name = current_run(project)
        if name is None:
            raise UnknownRun(
                "(none checked out)", names
            ) if names else MlforkError(
                "no run is checked out and none exists: start one with 'mlfork run'"
            )
        return name
    name = naming.run_from_ref(ref) or ref
    if name in names:
        return name
    candidates = [n for n in names if n.startswith(name)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise AmbiguousRun(name, candidates)
    raise UnknownRun(ref, names)


def tip(project: Project, run: str) -> str:
    commit = project.git.resolve_branch(naming.branch_name(run))
    if commit is None:
        raise UnknownRun(run, run_names(project))
    return commit


def record(project: Project, run: str, rev: str | None = None) -> RunRecord:
    rec = project.read_record(rev or tip(project, run))
    if rec is None or rec.name != run:
        raise MlforkError(
            f"branch 'mlfork/{run}' has no run record for '{run}': it was not made by mlfork"
        )
    return rec


def history(project: Project, rev: str) -> list[Commit]:
    """The mlfork commits on the first-parent line of `rev`, oldest first."""
    out: list[Commit] = []
    for commit in project.git.first_parent_walk(rev):
        if commit.trailers is None:
            break
        out.append(commit)
    out.reverse()
    return out


def checkpoints(project: Project, rev: str, with_metrics: bool = False) -> list[Checkpoint]:
    """Every checkpoint reachable on the first-parent line, oldest first; where two commits
    claim the same (iteration, step), the newest wins (DESIGN.md section 2). With metrics,
    each end-of-iteration checkpoint carries that iteration's metrics."""
    reader = MetricsReader(project) if with_metrics else None
    rec = project.read_record(rev) if with_metrics else None
    last_stage = rec.stages[-1] if rec is not None and rec.stages else None
    found: dict[tuple[int, str], Checkpoint] = {}
    for commit in history(project, rev):
        t = commit.trailers
        if t is None or not t.is_checkpoint:
            continue
        assert t.iteration is not None and t.step is not None
        # an iteration's metrics belong to its end; earlier stages still show the last ones
        metrics = reader.at(commit.id) if reader and t.step == last_stage else {}
        found[(t.iteration, t.step)] = Checkpoint(
            t.run, t.iteration, t.step, commit.id, commit.time, metrics
        )
    return sorted(found.values(), key=lambda c: (c.iteration, c.time))


def position(project: Project, rev: str) -> Position:
    """The newest checkpoint at or below `rev` on the first-parent line."""
    for commit in project.git.first_parent_walk(rev):
        t = commit.trailers
        if t is None:
            break
        if t.is_checkpoint:
            return Position(t.iteration, t.step)
    return Position(None, None)


def inherited_until(iteration: int, step: str, stages: list[str]) -> int:
    """A fork after the last stage of iteration N inherits 0..N; one inside iteration N
    inherits 0..N-1 (the tag `mlfork.inherited_until`)."""
    return iteration if stages and step == stages[-1] else iteration - 1


def end_of_iteration(cps: list[Checkpoint], stages: list[str]) -> dict[int, Checkpoint]:
    """iteration -> the checkpoint of its last stage."""
    last = stages[-1] if stages else None
    return {c.iteration: c for c in cps if c.step == last}


def run_info(project: Project, run: str) -> RunInfo:
    rev = tip(project, run)
    rec = record(project, run, rev)
    pos = position(project, rev)
    done = pos.done(rec.stages) if rec.stages else 0
    status = run_status(project, run, done, rec.iterations)
    headline, value = headline_at(project, rev)
    return RunInfo(
        name=run,
        branch=naming.branch_name(run),
        parent=rec.parent,
        status=status,
        done=done,
        budget=rec.iterations,
        headline=headline,
        headline_value=value,
        tip=rev,
        checked_out=current_run(project) == run,
        tags=tuple(rec.tags),
    )


def run_status(project: Project, run: str, done: int, budget: int) -> str:
    holder = project.lock_holder()
    if holder.get("run") == run:
        return "running"
    if done >= budget:
        return "completed"
    return str(project.read_state(run).get("status") or "stopped")


def headline_at(project: Project, rev: str) -> tuple[str | None, float | None]:
    """The headline metric (`val_metric` of params.yaml) and its value at a commit."""
    name = project.params_at(rev).get("val_metric")
    if not isinstance(name, str):
        return None, None
    return name, MetricsReader(project).at(rev).get(name)


class MetricsReader:
    """Reads the DVC metrics files of the pipeline at a commit (from git, or from the DVC
    cache for cached metrics), flattened to `a.b -> float`."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._paths_by_blob: dict[bytes, list[str]] = {}

    def paths(self, rev: str) -> list[str]:
        raw = self.project.git.read(rev, "dvc.yaml")
        if raw is None:
            return []
        if raw not in self._paths_by_blob:
            self._paths_by_blob[raw] = metrics_paths(raw)
        return self._paths_by_blob[raw]

    def at(self, rev: str) -> dict[str, float]:
        values: dict[str, float] = {}
        for path in self.paths(rev):
            data = self.project.git.read(rev, path)
            if data is None:
                data = self._from_cache(rev, path)
            if data is None:
                continue
            values.update(parse_metrics(path, data))
        return values

    def _from_cache(self, rev: str, path: str) -> bytes | None:
        from ..adapters.dvc import DvcProject

        lock = self.project.git.read(rev, "dvc.lock")
        entry = DvcProject.lock_outputs(lock).get(path)
        if not entry or "md5" not in entry:
            return None
        md5 = str(entry["md5"])
        blob = self.project.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        try:
            return blob.read_bytes()
        except OSError:
            return None


def metrics_paths(dvc_yaml: bytes) -> list[str]:
    try:
        data = yaml.safe_load(dvc_yaml) or {}
    except yaml.YAMLError:
        return []
    paths: list[str] = []
    for stage in (data.get("stages") or {}).values():
        if not isinstance(stage, dict):
            continue
        wdir = stage.get("wdir")
        for item in stage.get("metrics") or []:
            path = next(iter(item)) if isinstance(item, dict) else str(item)
            paths.append(f"{wdir.rstrip('/')}/{path}" if wdir and wdir != "." else path)
    return paths


def parse_metrics(path: str, data: bytes) -> dict[str, float]:
    try:
        loaded: Any = (
            json.loads(data) if path.endswith(".json") else yaml.safe_load(data)
        )
    except (ValueError, yaml.YAMLError):
        return {}
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        ):
            out[prefix] = float(value)

    walk("", loaded)
    return out


def runs(path: str = ".") -> list[RunInfo]:
    """Every run of the project (`mlfork runs`), by name."""
    project = Project.open(path, require_dvc=False)
    return [run_info(project, name) for name in run_names(project)]


def log(path: str = ".", run: str | None = None) -> list[Checkpoint]:
    """A run's checkpoints with their metrics, oldest first (`mlfork log`); inherited ones
    name the ancestor that owns them."""
    project = Project.open(path, require_dvc=False)
    name = resolve_run(project, run)
    return checkpoints(project, tip(project, name), with_metrics=True)
