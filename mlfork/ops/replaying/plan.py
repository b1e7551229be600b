"""`mlfork replay` and `mlfork verify` (DESIGN.md section 7).

- `plan`: read the manifest of a run's iteration (`.mlfork/replay.json` at the end of that
  iteration), rebuild the commands that reproduce it from the run's starting point (a root
  run from its base commit, a fork from its fork point with its own overrides), diff the
  recorded environment against this machine's, and check every dataset: DVC-tracked data by
  the hash DVC holds at the replay's starting point (no data is read), other files by
  SHA-256, streamed.
`mlfork replay --launch` (launch.py) runs the plan as a new run `<run>-replay-<k>` with DVC's
run cache off and compares every iteration with the original's; `mlfork verify` lives in
verify.py; the comparison both report, in divergence.py; the manifest itself in manifest.py
(environment in fingerprint.py, dataset identity in datasets.py).

Everything is validated before the first write: a refused replay writes nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlfork import naming
from mlfork.errors import (
    MalformedFile,
    ManifestMissing,
    MlforkError,
    NotFound,
    UsageError,
)
from mlfork.models import Checkpoint, RunResult
from mlfork.nested import flatten
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project
from mlfork.ops.replaying import datasets, fingerprint, manifest
from mlfork.ops.replaying.divergence import Comparison, iteration_span, str_or_none

# Run-record tags (mirrored to MLflow as tags of the same name) naming what a run replays.
TAG_REPLAY_OF = naming.TAG_REPLAY_OF
TAG_REPLAY_ITERATION = naming.TAG_REPLAY_ITERATION

DatasetStatus = Literal["match", "mismatch", "missing"]


# -- results ---------------------------------------------------------------------------------


@dataclass
class DatasetCheck:
    """One dataset of the manifest against what the replay would use."""

    path: str
    source: str  # "dvc" (md5 DVC holds) or "sha256" (the file, hashed)
    recorded: str | None
    current: str | None
    status: DatasetStatus
    where: str  # where `current` comes from
    detail: str = ""

    def line(self) -> str:
        algo = "md5" if self.source == "dvc" else "sha256"
        recorded = (self.recorded or "?")[:12]
        if self.status == "match":
            return f"{self.path}: match ({algo} {recorded}, {self.where})"
        if self.status == "missing":
            return f"{self.path}: missing: the run used {algo} {recorded}; {self.detail}"
        now = self.detail or f"{algo} {(self.current or '?')[:12]}"
        return f"{self.path}: mismatch: the run used {algo} {recorded}, {self.where} has {now}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReplayPlan:
    """What `mlfork replay RUN` prints: how to reproduce one iteration of a run, and what
    differs on this machine."""

    run: str  # the run asked about
    iteration: int
    original: str  # the run that ran the iteration (an ancestor, for an inherited one)
    commit: str  # the end-of-iteration commit that holds the manifest
    manifest_version: int
    kind: Literal["run", "fork"]
    start_commit: str  # the base commit (run) or the fork commit (fork)
    name: str  # the run a launch creates
    budget: int
    first_iteration: int  # the replay's first own iteration
    overrides: list[str]  # on the command line (a fork's own, relative keys from its fork point)
    fork_from: dict[str, Any] | None  # {run, iteration, step} of a fork
    original_argv: list[str]
    pythonhashseed: str
    seed: dict[str, Any]
    config: dict[str, Any]
    commands: list[str]
    environment: list[fingerprint.EnvChange] = field(default_factory=list)
    datasets: list[DatasetCheck] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[DatasetCheck]:
        return [d for d in self.datasets if d.status != "match"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["environment"] = [c.to_dict() for c in self.environment]
        data["datasets"] = [d.to_dict() for d in self.datasets]
        return data


@dataclass
class ReplayResult:
    """What `mlfork replay RUN --launch` did."""

    plan: ReplayPlan
    run: RunResult
    comparison: Comparison

    @property
    def identical(self) -> bool:
        return self.comparison.identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "run": self.run.to_dict(),
            "comparison": self.comparison.to_dict(),
            "identical": self.identical,
        }


# -- plan --------------------------------------------------------------------------------------


def plan(
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    *,
    iteration: int | None = None,
    name: str | None = None,
) -> ReplayPlan:
    """The command that reproduces `run` up to `iteration` (default: its last completed one),
    the environment diff against this machine, and the dataset check. Reads only."""
    project = Project.open(path)
    try:
        return plan_for(project, run, iteration, name)
    finally:
        project.close()


@dataclass
class _ManifestRef:
    checkpoint: Checkpoint
    manifest: manifest.Manifest


def load_manifest(
    project: Project, run: str, iteration: int | None = None
) -> tuple[int, _ManifestRef]:
    """(iteration, its manifest) of `run`; default: the last completed iteration."""
    rev = lineage.tip(project, run)
    rec = lineage.record(project, run, rev)
    ends = lineage.end_of_iteration(lineage.checkpoints(project, rev), rec.stages)
    if iteration is not None and iteration < 0:
        raise UsageError(f"--iteration must be 0 or more, got {iteration}")
    if not ends:
        raise NotFound(
            f"run '{run}' has no completed iteration, so no replay manifest yet:"
            f" run 'mlfork resume {run}' first"
        )
    if iteration is None:
        iteration = max(ends)
    if iteration not in ends:
        raise NotFound(
            f"iteration {iteration} of '{run}' is not completed"
            f" (completed: {iteration_span(sorted(ends))}); pick one of those"
        )
    cp = ends[iteration]
    text = project.git.read(cp.commit, naming.REPLAY_MANIFEST)
    if text is None:
        raise ManifestMissing(run, iteration, cp.commit)
    source = f"{naming.REPLAY_MANIFEST} of {cp.run} iteration {iteration} ({cp.commit[:10]})"
    loaded = manifest.load(text, source)
    data = loaded.data
    if not loaded.newer and (data["run"] != cp.run or data["iteration"] != iteration):
        raise MalformedFile(
            source, f"it describes {data['run']} iteration {data['iteration']} instead"
        )
    return iteration, _ManifestRef(cp, loaded)


def plan_for(
    project: Project, run: str | None, iteration: int | None, name: str | None
) -> ReplayPlan:
    from mlfork.ops.running.inherit import resolve_overrides
    from mlfork.ops.running.remake import remake

    src = lineage.resolve_run(project, run)
    iteration, ref = load_manifest(project, src, iteration)
    m, cp = ref.manifest, ref.checkpoint
    warnings = list(m.warnings)
    original = cp.run
    rec = project.read_record(cp.commit)
    if rec is None or rec.name != original:
        raise MalformedFile(
            naming.RUN_RECORD, f"at {cp.commit[:10]} it is not the record of '{original}'"
        )
    if original != src:
        warnings.append(
            f"iteration {iteration} of '{src}' was run by '{original}' before the fork:"
            f" the replay reproduces '{original}'"
        )
    name = free_replay_name(project, original) if name is None else name
    seed = m.seed
    phs = str(seed.get("PYTHONHASHSEED") or "")
    how = remake(project, rec, name, through=iteration, pythonhashseed=phs)
    kind, start, first, overrides = how.kind, how.start_commit, how.first_iteration, how.overrides
    budget, commands, fork_from = rec.iterations, how.commands, how.fork_from
    if rec.parent is None and iteration + 1 < budget:
        warnings.append(
            f"'mlfork run' runs the whole budget ({budget} iterations): iterations 0 to"
            f" {iteration} are the ones that reproduce the manifest"
        )
    if rec.parent is not None:
        p = rec.parent
        policy = project.policy(p.commit)
        parent_rec = project.read_record(p.commit)
        if parent_rec is not None:
            again, _, _ = resolve_overrides(
                parent_rec.overrides, overrides, policy.relative, policy.not_inherited, first,
                groups=project.config_groups(p.commit),
            )
            if again != rec.overrides:
                warnings.append(
                    f"the fork's overrides {rec.overrides} are not what its own overrides give"
                    f" again ({again}): the replay may compose another config"
                )
        moved = fork_point_moved(project, p.run, p.iteration, p.step, p.commit)
        if moved:
            warnings.append(moved)

    result = ReplayPlan(
        run=src, iteration=iteration, original=original, commit=cp.commit,
        manifest_version=m.version, kind=kind, start_commit=start, name=name, budget=budget,
        first_iteration=first, overrides=overrides, fork_from=fork_from,
        original_argv=[str(a) for a in (m.data.get("run_argv") or rec.argv)],
        pythonhashseed=phs, seed=seed, config=m.config, commands=commands, warnings=warnings,
    )
    result.config_changes = _config_changes(project, rec, start, iteration, m.config, warnings)
    if not m.newer:
        result.environment = fingerprint.diff_environment(m.environment)
        result.datasets = check_datasets(project, m.datasets, start, cp.commit)
    return result


def free_replay_name(project: Project, run: str) -> str:
    taken = set(lineage.visible_runs(project))
    k = 1
    while naming.replay_run_name(run, k) in taken:
        k += 1
    return naming.replay_run_name(run, k)


def fork_point_moved(project: Project, run: str, iteration: int, step: str, commit: str) -> str:
    """'' if `run`'s checkpoint (iteration, step) is still `commit`; else why not."""
    tip = project.git.resolve_branch(naming.branch_name(run))
    if tip is None:
        return f"the fork point's run '{run}' no longer exists: the fork cannot be replayed"
    found = {(c.iteration, c.step): c for c in lineage.checkpoints(project, tip)}
    cp = found.get((iteration, step))
    if cp is None or cp.commit != commit:
        return (
            f"'{run}' iteration {iteration} {step} is no longer commit {commit[:10]}"
            " (its branch was rewritten): the fork cannot be replayed from it"
        )
    return ""


def _config_changes(
    project: Project, rec: Any, start: str, iteration: int, recorded: dict[str, Any],
    warnings: list[str],
) -> list[str]:
    """The keys whose value differs between the manifest's config and the config the replay
    composes for the same iteration (conf/ at the starting point + the run's overrides)."""
    try:
        composed = project.compose(start, list(rec.overrides), iteration,
                                   rec.iterations).config
    except MlforkError as exc:
        warnings.append(f"the replay's config cannot be composed here: {exc}")
        return []
    a, b = flatten(recorded), flatten(composed)
    return [
        f"{key}: {a.get(key, 'absent')} -> {b.get(key, 'absent')}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


# -- datasets ----------------------------------------------------------------------------------


def check_datasets(
    project: Project, entries: dict[str, dict[str, Any]], start: str, run_commit: str
) -> list[DatasetCheck]:
    """Each manifest dataset against what a replay from `start` uses:
    - DVC data: the md5 DVC holds for the path at the starting point (its .dvc file, or
      dvc.lock); data the run's own pipeline produced (absent there) against the run's
      dvc.lock. No data is read.
    - other files: git's blob at the starting point if git tracks the file there, else the
      file in the workspace, SHA-256 streamed (a size change is a mismatch without a read).
    """
    from mlfork.adapters.dvc_files import dvcfile_outputs

    git = project.git
    start_lock = project.outputs_at(start)
    run_lock = project.outputs_at(run_commit)
    checks: list[DatasetCheck] = []
    for path, entry in sorted(entries.items()):
        if entry.get("source") == "dvc":
            recorded = str_or_none(entry.get("md5"))
            current, where = None, ""
            dvcfile = git.read(start, path + ".dvc")
            if dvcfile is not None:
                entry = dvcfile_outputs(dvcfile).get(os.path.basename(path), {})
                current, where = str_or_none(entry.get("md5")), f"{path}.dvc at {start[:10]}"
            elif path in start_lock:
                current = str_or_none(start_lock[path].get("md5"))
                where = f"dvc.lock at {start[:10]}"
            elif path in run_lock:
                current = str_or_none(run_lock[path].get("md5"))
                where = "the run's dvc.lock, regenerated by the replay's pipeline"
            if current is None:
                checks.append(DatasetCheck(
                    path, "dvc", recorded, None, "missing", "",
                    f"DVC tracks no '{path}' at {start[:10]} nor in the run's dvc.lock",
                ))
                continue
            status: DatasetStatus = "match" if current == recorded else "mismatch"
            checks.append(DatasetCheck(path, "dvc", recorded, current, status, where))
        else:
            checks.append(_check_file(project, path, entry, start))
    return checks


def _check_file(project: Project, path: str, entry: dict[str, Any], start: str) -> DatasetCheck:
    recorded, size = str_or_none(entry.get("sha256")), entry.get("size")
    git = project.git
    if not os.path.isabs(path) and git.has_path(start, path):
        blob = git.read(start, path) or b""
        where = f"git at {start[:10]}"
        if size is not None and len(blob) != size:
            return DatasetCheck(path, "sha256", recorded, None, "mismatch", where,
                                f"{len(blob)} bytes, not {size}")
        current = hashlib.sha256(blob).hexdigest()
    else:
        full = Path(path) if os.path.isabs(path) else project.root / path
        where = "the workspace"
        try:
            actual = full.stat().st_size
        except OSError:
            return DatasetCheck(path, "sha256", recorded, None, "missing", where,
                                "the file is not in the workspace")
        if size is not None and actual != size:
            return DatasetCheck(path, "sha256", recorded, None, "mismatch", where,
                                f"{actual} bytes, not {size}")
        current = datasets.sha256_file(full)
    status: DatasetStatus = "match" if current == recorded else "mismatch"
    return DatasetCheck(path, "sha256", recorded, current, status, where)
