"""Runs and checkpoints, read from git alone (git is the truth, MLflow an index).

A run's history is its branch's first-parent line down to the record commit of its root
run (the `start run` commit of the run that is not a fork). On that line, commits with
checkpoint trailers are checkpoints; a record commit opens a run (or a fork); any other
commit is the user's (a code fix between iterations, a recorded plain `dvc repro`): it is
part of the run and belongs to the iteration after the last checkpoint before it.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from mlfork import naming
from mlfork.adapters.git_read import RemoteBranch
from mlfork.errors import AmbiguousRun, MalformedFile, NotFound, UnknownRun
from mlfork.models import Checkpoint, Commit, RunInfo, RunRecord
from mlfork.ops.kernel.project import Project


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
        return self.iteration + 1 if stages and self.step == stages[-1] else self.iteration


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


_REMOTE: weakref.WeakKeyDictionary[Project, dict[str, list[RemoteBranch]]] = \
    weakref.WeakKeyDictionary()


def remote_runs(project: Project) -> dict[str, list[RemoteBranch]]:
    """Runs on remote-tracking branches (`<remote>/mlfork/<name>` whose tip carries a run
    record: a teammate's, after `git fetch` or `mlfork pull`), by name; read once per
    command."""
    if project not in _REMOTE:
        found: dict[str, list[RemoteBranch]] = {}
        for rb in project.git.remote_branches(naming.BRANCH_PREFIX):
            name = naming.run_from_ref(naming.BRANCH_PREFIX + rb.name)
            if name and project.git.has_path(rb.tip, naming.RUN_RECORD):
                found.setdefault(name, []).append(rb)
        _REMOTE[project] = found
    return _REMOTE[project]


def visible_runs(project: Project) -> list[str]:
    """The local runs and those only a remote has, by name."""
    return sorted(set(run_names(project)) | set(remote_runs(project)))


def remote_of(project: Project, run: str) -> str | None:
    """The remote a run is read from when it has no local branch; None for a local run."""
    if project.git.resolve_branch(naming.branch_name(run)) is not None:
        return None
    found = remote_runs(project).get(run)
    return found[0].remote if found else None


def _without_remote(project: Project, ref: str) -> str | None:
    """`origin/mlfork/base`, `refs/remotes/origin/mlfork/base` or `origin/base` -> `base`."""
    for remote in {rb.remote for found in remote_runs(project).values() for rb in found}:
        for prefix in (f"refs/remotes/{remote}/{naming.BRANCH_PREFIX}",
                       f"{remote}/{naming.BRANCH_PREFIX}", f"{remote}/"):
            if ref.startswith(prefix) and naming.is_valid_run_name(ref[len(prefix):]):
                return ref[len(prefix):]
    return None


def current_run(project: Project) -> str | None:
    branch = project.git.head_branch()
    return naming.run_from_ref(branch) if branch else None


def resolve_run(project: Project, ref: str | None) -> str:
    """A run name, its branch (`mlfork/x`, `refs/heads/mlfork/x`, a remote's
    `origin/mlfork/x`) or a unique prefix; None means the run checked out. A run only a
    remote has resolves to it (a local branch wins over a remote one)."""
    names = visible_runs(project)
    if ref is None:
        name = current_run(project)
        if name is None:
            if names:
                raise UnknownRun("(none checked out)", names)
            raise NotFound("no run is checked out and none exists: start one with 'mlfork run'")
        return name
    name = naming.run_from_ref(ref) or _without_remote(project, ref) or ref
    if name in names:
        return name
    candidates = [n for n in names if n.startswith(name)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise AmbiguousRun(name, candidates)
    raise UnknownRun(ref, names)


def tip(project: Project, run: str) -> str:
    """The run's tip: its local branch, else the one remote branch that has it."""
    commit = project.git.resolve_branch(naming.branch_name(run))
    if commit is not None:
        return commit
    found = remote_runs(project).get(run, [])
    if len({rb.tip for rb in found}) == 1:
        return found[0].tip
    if found:
        where = ", ".join(f"{rb.remote}/{naming.branch_name(run)}" for rb in found)
        raise NotFound(f"run '{run}' is on several remotes at different commits ({where}):"
                       f" make one of them local with 'mlfork pull --remote R {run}'")
    raise UnknownRun(run, visible_runs(project))


def record(project: Project, run: str, rev: str | None = None) -> RunRecord:
    rev = rev or tip(project, run)
    rec = project.read_record(rev)
    if rec is None:
        raise MalformedFile(
            naming.RUN_RECORD, f"branch 'mlfork/{run}' has none at {rev[:10]}: it was not made"
            " by mlfork (rename or delete the branch)"
        )
    if rec.name != run:
        raise MalformedFile(
            naming.RUN_RECORD, f"on branch 'mlfork/{run}' it names run '{rec.name}'; a run's"
            " branch must carry its own record (rename the branch back, or start a new run)"
        )
    return rec


def walk(project: Project, rev: str) -> Iterator[Commit]:
    """A run's history, newest first: the first-parent line of `rev` down to (and with)
    the record commit of its root run."""
    for commit in project.git.first_parent_walk(rev):
        yield commit
        t = commit.trailers
        if t is not None and not t.is_checkpoint and project.starts_lineage(commit.id):
            return


def history(project: Project, rev: str) -> list[Commit]:
    """`walk`, oldest first."""
    out = list(walk(project, rev))
    out.reverse()
    return out


def checkpoints(project: Project, rev: str, with_metrics: bool = False) -> list[Checkpoint]:
    """Every checkpoint of the history of `rev`, oldest first; where two commits claim the
    same (iteration, step), the newest wins (DESIGN.md section 2). With metrics, each
    end-of-iteration checkpoint carries that iteration's metrics."""
    rec = project.read_record(rev) if with_metrics else None
    last_stage = rec.stages[-1] if rec is not None and rec.stages else None
    found: dict[tuple[int, str], Checkpoint] = {}
    for commit in history(project, rev):
        t = commit.trailers
        if t is None or t.iteration is None or t.step is None:
            continue
        # an iteration's metrics belong to its end; earlier stages still show the last ones
        metrics = project.metrics.at(commit.id) if with_metrics and t.step == last_stage else {}
        found[(t.iteration, t.step)] = Checkpoint(
            t.run, t.iteration, t.step, commit.id, commit.time, metrics
        )
    return sorted(found.values(), key=lambda c: (c.iteration, c.time))


def position(project: Project, rev: str) -> Position:
    """The newest checkpoint of the history of `rev` (user commits above it do not move it)."""
    return _position_of(latest_checkpoint(project, rev))


def _position_of(cp: Checkpoint | None) -> Position:
    return Position(None, None) if cp is None else Position(cp.iteration, cp.step)


def latest_checkpoint(project: Project, rev: str) -> Checkpoint | None:
    """The newest checkpoint of the history of `rev`, read from its tip down to it: what
    `checkpoints(...)[-1]` would say of the newest, without the rest of the history."""
    for commit in walk(project, rev):
        t = commit.trailers
        if t is not None and t.iteration is not None and t.step is not None:
            return Checkpoint(t.run, t.iteration, t.step, commit.id, commit.time, {})
    return None


def commits_since_checkpoint(project: Project, rev: str) -> list[Commit]:
    """The user's commits (no mlfork trailers) between the newest checkpoint or record
    commit and `rev`, oldest first: they belong to the next iteration."""
    out = []
    for commit in project.git.first_parent_walk(rev):
        if commit.trailers is not None:
            break
        out.append(commit)
    out.reverse()
    return out


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
    latest = latest_checkpoint(project, rev)
    done = _position_of(latest).done(rec.stages) if rec.stages else 0
    status = run_status(project, run, done, rec.iterations)
    headline, value = headline_at(project, rev)
    if rec.merged and latest is not None and latest.run != run:
        value = None  # the metrics files are the first source's: the soup is not evaluated
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
        remote=remote_of(project, run),
        merged=tuple(f"{m.get('run')}@{m.get('iteration')}" for m in rec.merged),
    )


def run_status(project: Project, run: str, done: int, budget: int) -> str:
    if run in project.running():
        return "running"
    if done >= budget:
        return "completed"
    return str(project.read_state(run).get("status") or "stopped")


def headline_at(project: Project, rev: str) -> tuple[str | None, float | None]:
    """The headline metric at a commit: the config's `val_metric` where it names one, else
    the first metric the project logs; (None, None) for a project that logs none."""
    values = project.metrics.at(rev)
    name = project.params_at(rev).get("val_metric")
    if isinstance(name, str):
        return name, values.get(name)
    if not values:
        return None, None
    first = next(iter(values))
    return first, values[first]


def runs(path: str | os.PathLike[str] = ".") -> list[RunInfo]:
    """Every run of the project (`mlfork runs`), by name."""
    project = Project.open(path, require_dvc=False)
    try:
        return [run_info(project, name) for name in visible_runs(project)]
    finally:
        project.close()


def recent_checkpoints(project: Project, rev: str, limit: int) -> list[Checkpoint]:
    """The newest `limit` checkpoints of the history of `rev`, oldest first, with metrics:
    what `checkpoints(..., with_metrics=True)[-limit:]` says, reading only those commits."""
    rec = project.read_record(rev)
    last_stage = rec.stages[-1] if rec is not None and rec.stages else None
    found: dict[tuple[int, str], Checkpoint] = {}
    for commit in walk(project, rev):  # newest first: the first claim of a key wins
        t = commit.trailers
        if t is None or t.iteration is None or t.step is None or (t.iteration, t.step) in found:
            continue
        found[(t.iteration, t.step)] = Checkpoint(t.run, t.iteration, t.step, commit.id,
                                                  commit.time)
        if len(found) >= limit:
            break
    oldest_first = list(found.values())[::-1]
    cps = sorted(oldest_first, key=lambda c: (c.iteration, c.time))
    for cp in cps:
        if cp.step == last_stage:
            cp.metrics.update(project.metrics.at(cp.commit))
    return cps


def log(
    path: str | os.PathLike[str] = ".", run: str | None = None, *, limit: int | None = None
) -> list[Checkpoint]:
    """A run's checkpoints with their metrics, oldest first (`mlfork log`); inherited ones
    name the ancestor that owns them. `limit`: only the newest so many (read alone)."""
    project = Project.open(path, require_dvc=False)
    try:
        name = resolve_run(project, run)
        if limit is not None:
            return recent_checkpoints(project, tip(project, name), limit) if limit > 0 else []
        return checkpoints(project, tip(project, name), with_metrics=True)
    finally:
        project.close()
