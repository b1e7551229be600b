"""`mlfork replay` and `mlfork verify` (DESIGN.md section 7).

- `plan`: read the manifest of a run's iteration (`.mlfork/replay.json` at the end of that
  iteration), rebuild the commands that reproduce it from the run's starting point (a root
  run from its base commit, a fork from its fork point with its own overrides), diff the
  recorded environment against this machine's, and check every dataset: DVC-tracked data by
  the hash DVC holds at the replay's starting point (no data is read), other files by
  SHA-256, streamed.
- `launch`: the same, then run it as a new run `<run>-replay-<k>` with DVC's run cache off,
  and compare every iteration's metrics and DVC output hashes with the original's.
- `verify`: fork a run at the end of iteration N without overrides, resume the fork, compare
  with the run's own next iterations, put the workspace back and remove the scratch fork.

Everything is validated before the first write: a refused replay writes nothing.
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import naming
from ..errors import (
    DatasetMismatch,
    MalformedFile,
    ManifestMissing,
    MlforkError,
    NotFound,
    UsageError,
)
from ..models import Checkpoint, RunResult
from . import lineage, manifest, track
from .project import Project, record_text
from .run import Event, Progress, _quiet, advance, check_new_name, next_free_name, now_iso

# Run-record tags (mirrored to MLflow as tags of the same name) naming what a run replays.
TAG_REPLAY_OF = "mlfork.replay_of"
TAG_REPLAY_ITERATION = "mlfork.replay_iteration"
TAG_VERIFY_OF = "mlfork.verify_of"
VERIFY_STEM = "{run}-verify"

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
    environment: list[manifest.EnvChange] = field(default_factory=list)
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
class MetricDivergence:
    metric: str
    iteration: int
    original: float | None
    replay: float | None
    difference: float  # |original - replay|; inf when one side lacks the metric

    def line(self) -> str:
        return (
            f"{self.metric}: {_num(self.difference)} at iteration {self.iteration}"
            f" ({_num(self.original)} -> {_num(self.replay)})"
        )


@dataclass
class OutputDivergence:
    iteration: int
    path: str
    original: str | None
    replay: str | None

    def line(self) -> str:
        return (
            f"{self.path} at iteration {self.iteration}:"
            f" md5 {(self.original or 'absent')[:12]} -> {(self.replay or 'absent')[:12]}"
        )


@dataclass
class IterationComparison:
    iteration: int
    original_commit: str | None
    replay_commit: str | None
    metrics_identical: bool
    outputs_identical: bool

    @property
    def identical(self) -> bool:
        return self.metrics_identical and self.outputs_identical


@dataclass
class Comparison:
    """Every compared iteration's metrics (exact equality) and DVC output hashes."""

    original: str
    replay: str
    iterations: list[int]
    rows: list[IterationComparison] = field(default_factory=list)
    largest: list[MetricDivergence] = field(default_factory=list)  # per differing metric
    first_metric: MetricDivergence | None = None
    first_output: OutputDivergence | None = None
    missing: list[int] = field(default_factory=list)  # iterations the replay did not complete

    @property
    def identical(self) -> bool:
        return bool(self.rows) and not self.missing and all(r.identical for r in self.rows)

    @property
    def first_iteration(self) -> int | None:
        return next((r.iteration for r in self.rows if not r.identical), None)

    def summary(self) -> str:
        span = _span(self.iterations)
        if self.identical:
            return (
                f"identical: {span} of '{self.replay}'"
                f" {'match' if len(self.iterations) > 1 else 'matches'} '{self.original}'"
                " bit for bit"
                " (every metric and every DVC output hash)"
            )
        parts = [f"diverged from '{self.original}'"]
        if self.first_iteration is not None:
            parts.append(f"first at iteration {self.first_iteration}")
        if self.first_metric is not None:
            parts.append(f"metric {self.first_metric.line()}")
        if self.first_output is not None:
            parts.append(f"output {self.first_output.line()}")
        if self.missing:
            parts.append(f"iterations not completed by the replay: {_span(self.missing)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["identical"] = self.identical
        data["first_iteration"] = self.first_iteration
        data["summary"] = self.summary()
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["identical"] = row.identical
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


@dataclass
class VerifyResult:
    """What `mlfork verify` did."""

    run: str
    from_iteration: int
    iterations: int
    scratch: str
    kept: bool
    comparison: Comparison
    warnings: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.comparison.identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "from_iteration": self.from_iteration,
            "iterations": self.iterations,
            "scratch": self.scratch,
            "kept": self.kept,
            "identical": self.identical,
            "comparison": self.comparison.to_dict(),
            "warnings": list(self.warnings),
        }


# -- plan --------------------------------------------------------------------------------------


def plan(
    *,
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    iteration: int | None = None,
    name: str | None = None,
) -> ReplayPlan:
    """The command that reproduces `run` up to `iteration` (default: its last completed one),
    the environment diff against this machine, and the dataset check. Reads only."""
    project = Project.open(path)
    try:
        return _plan(project, run, iteration, name)
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
            f"iteration {iteration} of '{run}' is not completed (completed: {_span(sorted(ends))});"
            " pick one of those"
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


def _plan(project: Project, run: str | None, iteration: int | None, name: str | None) -> ReplayPlan:
    from .fork import resolve_overrides

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
    name = name or free_replay_name(project, original)
    seed = m.seed
    phs = str(seed.get("PYTHONHASHSEED") or "")
    budget, target, last_stage = rec.iterations, iteration + 1, rec.stages[-1]
    env_prefix = f"PYTHONHASHSEED={shlex.quote(phs)} " if phs else ""
    fork_from = None
    if rec.parent is None:
        kind: Literal["run", "fork"] = "run"
        start, first, overrides = rec.base_commit, 0, list(rec.overrides)
        line = env_prefix + shlex.join(
            ["mlfork", "run", "--name", name, "--iterations", str(budget), *overrides]
        )
        if target < budget:
            warnings.append(
                f"'mlfork run' runs the whole budget ({budget} iterations): iterations 0 to"
                f" {iteration} are the ones that reproduce the manifest"
            )
        commands = [f"git switch --detach {start[:12]}", line]
    else:
        kind = "fork"
        p = rec.parent
        start = p.commit
        fork_from = {"run": p.run, "iteration": p.iteration, "step": p.step}
        policy = project.policy(p.commit)
        first = p.iteration + 1 if p.step == last_stage else p.iteration
        overrides = _relative_back(rec.own_overrides, policy.relative, first)
        argv = ["mlfork", "branch", "--from", p.run, "--from-iteration", str(p.iteration)]
        if p.step != last_stage:
            argv += ["--from-step", p.step]
        argv += ["--name", name, "--iterations", str(budget - first), *overrides]
        resume = ["mlfork", "resume", name]
        if target < budget:
            resume += ["--iterations", str(target - first)]
        commands = [shlex.join(argv), env_prefix + shlex.join(resume)]
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
        moved = _fork_point_moved(project, p.run, p.iteration, p.step, p.commit)
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
        result.environment = manifest.diff_environment(m.environment)
        result.datasets = check_datasets(project, m.datasets, start, cp.commit)
    return result


def free_replay_name(project: Project, run: str) -> str:
    taken = set(lineage.run_names(project))
    k = 1
    while naming.replay_run_name(run, k) in taken:
        k += 1
    return naming.replay_run_name(run, k)


def _relative_back(own: Sequence[str], relative: Sequence[str], completed: int) -> list[str]:
    """A fork records its relative keys (counted from the fork point) as absolute values:
    give them back as `mlfork branch` takes them."""
    from ..adapters import hydra

    out: list[str] = []
    for ov in hydra.parse_overrides(list(own)):
        value = (ov.value_text or "").strip()
        relative_key = ov.key in relative and ov.kind != "delete" and value.isdigit()
        if relative_key and int(value) >= completed:
            out.append(ov.with_value(str(int(value) - completed)))
            continue
        out.append(ov.text)
    return out


def _fork_point_moved(project: Project, run: str, iteration: int, step: str, commit: str) -> str:
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
        composed = project.compose(start, list(rec.overrides), rec.base_commit, iteration,
                                   rec.iterations)
    except MlforkError as exc:
        warnings.append(f"the replay's config cannot be composed here: {exc}")
        return []
    a, b = track.flatten(recorded), track.flatten(composed)
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
    from ..adapters.dvc import DvcProject

    git = project.git
    start_lock = DvcProject.lock_outputs(git.read(start, "dvc.lock"))
    run_lock = DvcProject.lock_outputs(git.read(run_commit, "dvc.lock"))
    checks: list[DatasetCheck] = []
    for path, entry in sorted(entries.items()):
        if entry.get("source") == "dvc":
            recorded = _str(entry.get("md5"))
            current, where = None, ""
            dvcfile = git.read(start, path + ".dvc")
            if dvcfile is not None:
                current, where = _dvc_file_md5(dvcfile, path), f"{path}.dvc at {start[:10]}"
            elif path in start_lock:
                current, where = _str(start_lock[path].get("md5")), f"dvc.lock at {start[:10]}"
            elif path in run_lock:
                current = _str(run_lock[path].get("md5"))
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
    recorded, size = _str(entry.get("sha256")), entry.get("size")
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
        current = manifest.sha256_file(full)
    status: DatasetStatus = "match" if current == recorded else "mismatch"
    return DatasetCheck(path, "sha256", recorded, current, status, where)


def _dvc_file_md5(text: bytes, path: str) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    base = os.path.basename(path)
    for out in (data.get("outs") or []) if isinstance(data, dict) else []:
        if isinstance(out, dict) and os.path.normpath(str(out.get("path"))) == base:
            return _str(out.get("md5"))
    return None


# -- launch ------------------------------------------------------------------------------------


class _Once:
    """Forwards progress events, each distinct warning once (fork and resume warn about the
    same environment drift)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: set[str] = set()

    def __call__(self, event: Event) -> None:
        if event.kind == "warning":
            if event.message in self.seen:
                return
            self.seen.add(event.message)
        self.progress(event)


def drift_messages(p: ReplayPlan) -> list[str]:
    head = f"this machine's environment differs from the one that ran {p.original} iteration"
    return [f"{head} {p.iteration}: {c.line()}" for c in p.environment]


def launch(
    *,
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    iteration: int | None = None,
    force: bool = False,
    name: str | None = None,
    progress: Progress = _quiet,
    echo: bool = False,
    argv: Sequence[str] = (),
) -> ReplayResult:
    """Relaunch `run` (up to `iteration`) as the new run `name` (default
    `<run>-replay-<k>`) from the same starting point, with the manifest's overrides and
    PYTHONHASHSEED, DVC's run cache off; then compare every iteration with the original.
    Environment drift warns; a dataset that differs refuses (DatasetMismatch) unless
    `force`. The workspace ends on the replay's branch, as after `mlfork run`."""
    from .fork import branch
    from .run import resume

    say = _Once(progress)
    project = Project.open(path)
    try:
        p = _plan(project, run, iteration, name)
        check_new_name(project, p.name)
        project.git.require_clean()
        bad = p.problems
        if bad and not force:
            raise DatasetMismatch(
                f"{len(bad)} dataset(s) differ from what '{p.original}' used ({bad[0].line()}):"
                " nothing was launched; restore the data, or pass --force to replay anyway"
            )
        if p.kind == "fork":
            assert p.fork_from is not None
            moved = _fork_point_moved(project, p.fork_from["run"], p.fork_from["iteration"],
                                      p.fork_from["step"], p.start_commit)
            if moved:
                raise NotFound(moved)
    finally:
        project.close()

    for message in [*p.warnings, *drift_messages(p)]:
        say(Event("warning", p.name, message=message))
    for check in bad:
        say(Event("warning", p.name, message=f"--force: replaying although {check.line()}"))
    if p.config_changes:
        say(Event("warning", p.name, message="the replay composes another config than the"
                  " manifest's: " + "; ".join(p.config_changes[:5])))
    tags = [f"{TAG_REPLAY_OF}={p.original}", f"{TAG_REPLAY_ITERATION}={p.iteration}"]
    seed = p.pythonhashseed or None
    if p.kind == "run":
        result = _start_at(path, p, tags, say, echo, argv, seed)
    else:
        assert p.fork_from is not None
        mid_iteration = p.first_iteration == p.fork_from["iteration"]  # forked after a stage
        forked = branch(
            path=path, source=p.fork_from["run"], from_iteration=p.fork_from["iteration"],
            from_step=p.fork_from["step"] if mid_iteration else None,
            name=p.name, iterations=p.budget - p.first_iteration, tags=tags,
            overrides=p.overrides, argv=argv, progress=say,
        )
        if forked.fork_commit != p.start_commit:  # a race with a rewrite of the parent
            raise NotFound(f"'{p.fork_from['run']}' moved while forking: replay '{p.name}' again")
        more = p.iteration + 1 - p.first_iteration if p.iteration + 1 < p.budget else None
        result = resume(
            path=path, run=p.name, iterations=more, run_cache=False, pythonhashseed=seed,
            progress=say, echo=echo, argv=argv,
        )
    project = Project.open(path)
    try:
        replay_tip = lineage.tip(project, p.name)
        comparison = compare(
            project, p.commit, replay_tip, range(p.first_iteration, p.iteration + 1),
            original=p.original, replay=p.name,
        )
    finally:
        project.close()
    return ReplayResult(plan=p, run=result, comparison=comparison)


def _start_at(
    path: str | os.PathLike[str],
    p: ReplayPlan,
    tags: list[str],
    progress: Progress,
    echo: bool,
    argv: Sequence[str],
    pythonhashseed: str | None,
) -> RunResult:
    """`mlfork run` at the original's base commit rather than HEAD: the branch is created
    there with its run record committed straight into the object database, then checked
    out (with its DVC outputs); the user's branch is not touched."""
    from ..models import RunRecord

    project = Project.open(path)
    git = project.git
    sig = git.signature()
    original = project.read_record(p.commit)
    assert original is not None
    previous = git.head_branch()
    with project.lock(p.name, "replay") as lock:
        record = RunRecord(
            name=p.name, iterations=p.budget, overrides=list(p.overrides),
            own_overrides=list(p.overrides), options={"timeout": None, "stage_timeout": None},
            tags=tags, argv=list(argv), created=now_iso(), base_commit=p.start_commit,
            stages=list(original.stages),
        )
        branch = naming.branch_name(p.name)
        git.create_branch(branch, p.start_commit)
        try:
            body = f"replay of {p.original} up to iteration {p.iteration}\niterations: {p.budget}"
            if p.overrides:
                body += "\noverrides: " + " ".join(p.overrides)
            git.commit_tree_files(
                branch, p.start_commit, {naming.RUN_RECORD: record_text(record).encode()},
                naming.format_record_message(p.name, "start run", body), signature=sig,
            )
            git.switch(branch)
            project.dvc.checkout()
        except BaseException:
            if previous is not None and git.head_branch() != previous:
                git.switch(previous)
                project.dvc.checkout()
            tip = git.resolve_branch(branch)
            if tip is not None:
                git.delete_branch(branch, tip)
            project.close()
            raise
        return advance(
            project, p.name, lock=lock, target=p.iteration + 1, progress=progress, echo=echo,
            run_cache=False, signature=sig, argv=argv, pythonhashseed=pythonhashseed,
        )


# -- compare -----------------------------------------------------------------------------------


def compare(
    project: Project,
    original_rev: str,
    replay_rev: str,
    iterations: Iterable[int],
    *,
    original: str = "",
    replay: str = "",
) -> Comparison:
    """Compare the end-of-iteration checkpoints of two lineages (each read from the
    first-parent history of its commit) iteration by iteration: the metrics exactly, and the
    md5 of every DVC output in dvc.lock."""
    its = list(iterations)
    result = Comparison(original=original or original_rev[:10], replay=replay or replay_rev[:10],
                        iterations=its)
    ends_o = _ends(project, original_rev)
    ends_r = _ends(project, replay_rev)
    reader = lineage.MetricsReader(project)
    largest: dict[str, MetricDivergence] = {}
    for it in its:
        oc, rc = ends_o.get(it), ends_r.get(it)
        if oc is None or rc is None:
            result.missing.append(it)
            result.rows.append(IterationComparison(
                it, oc.commit if oc else None, rc.commit if rc else None, False, False
            ))
            continue
        om, rm = reader.at(oc.commit), reader.at(rc.commit)
        metrics_ok = True
        for key in sorted(set(om) | set(rm)):
            a, b = om.get(key), rm.get(key)
            if a == b:
                continue
            metrics_ok = False
            diff = abs(a - b) if a is not None and b is not None else math.inf
            div = MetricDivergence(key, it, a, b, diff)
            if result.first_metric is None:
                result.first_metric = div
            if key not in largest or diff > largest[key].difference:
                largest[key] = div
        oo, ro = _outputs(project, oc.commit), _outputs(project, rc.commit)
        outputs_ok = True
        for out in [*oo, *(k for k in ro if k not in oo)]:  # pipeline order, as in dvc.lock
            if oo.get(out) != ro.get(out):
                outputs_ok = False
                if result.first_output is None:
                    result.first_output = OutputDivergence(it, out, oo.get(out), ro.get(out))
        result.rows.append(
            IterationComparison(it, oc.commit, rc.commit, metrics_ok, outputs_ok)
        )
    result.largest = [largest[k] for k in sorted(largest)]
    return result


def _ends(project: Project, rev: str) -> dict[int, Checkpoint]:
    rec = project.read_record(rev)
    if rec is None or not rec.stages:
        return {}
    return lineage.end_of_iteration(lineage.checkpoints(project, rev), rec.stages)


def _outputs(project: Project, commit: str) -> dict[str, str | None]:
    from ..adapters.dvc import DvcProject

    outs = DvcProject.lock_outputs(project.git.read(commit, "dvc.lock"))
    return {path: _str(entry.get("md5")) for path, entry in outs.items()}


# -- verify ------------------------------------------------------------------------------------


def verify(
    *,
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    from_iteration: int,
    iterations: int | None = None,
    keep: bool = False,
    progress: Progress = _quiet,
    echo: bool = False,
    argv: Sequence[str] = (),
) -> VerifyResult:
    """Fork `run` at the end of `from_iteration` without overrides into a scratch run,
    resume it for `iterations` (default: up to the run's last completed iteration) with
    DVC's run cache off, and compare those iterations with the run's. The checked-out
    branch and its DVC outputs are restored at the end; the scratch fork (branch, MLflow
    run, local state) is removed unless `keep`."""
    from .fork import branch
    from .run import resume

    say = _Once(progress)
    project = Project.open(path)
    try:
        git = project.git
        src = lineage.resolve_run(project, run)
        rev = lineage.tip(project, src)
        rec = lineage.record(project, src, rev)
        ends = lineage.end_of_iteration(lineage.checkpoints(project, rev), rec.stages)
        n = from_iteration
        if n < 0:
            raise UsageError(f"--from-iteration must be 0 or more, got {n}")
        if n not in ends:
            span = _span(sorted(ends)) if ends else "none yet"
            raise NotFound(
                f"iteration {n} of '{src}' is not completed (completed: {span}); pick one of those"
            )
        last = max(ends)
        if n >= last:
            raise UsageError(
                f"iteration {n} is the last completed iteration of '{src}': nothing after it to"
                f" compare with; pick --from-iteration below {n}, or 'mlfork resume {src}' first"
            )
        k = iterations if iterations is not None else last - n
        if k < 1:
            raise UsageError(f"--iterations must be 1 or more, got {k}")
        if n + k > last:
            raise UsageError(
                f"--iterations {k} goes past the last completed iteration of '{src}' ({last}):"
                f" at most {last - n}"
            )
        previous = git.head_branch()
        if previous is None:
            raise UsageError(
                "HEAD is detached: check out a branch first (verify switches back to it)"
            )
        git.require_clean()
        scratch = next_free_name(project, VERIFY_STEM.format(run=src))
        check_new_name(project, scratch)
        seed = _pythonhashseed(project, ends[n + 1].commit)
        original_rev = ends[n + k].commit
    finally:
        project.close()

    created = False
    warnings: list[str] = []
    comparison: Comparison | None = None
    try:
        branch(
            path=path, source=src, from_iteration=n, name=scratch, iterations=k,
            tags=[f"{TAG_VERIFY_OF}={src}"], argv=argv, progress=say,
        )
        created = True
        resume(path=path, run=scratch, run_cache=False, pythonhashseed=seed, progress=say,
               echo=echo, argv=argv)
        project = Project.open(path)
        try:
            comparison = compare(
                project, original_rev, lineage.tip(project, scratch), range(n + 1, n + k + 1),
                original=src, replay=scratch,
            )
        finally:
            project.close()
    finally:
        warnings = _put_back(path, previous, scratch, created, keep, say)
    assert comparison is not None
    return VerifyResult(
        run=src, from_iteration=n, iterations=k, scratch=scratch, kept=keep and created,
        comparison=comparison, warnings=warnings,
    )


def _pythonhashseed(project: Project, commit: str) -> str | None:
    text = project.git.read(commit, naming.REPLAY_MANIFEST)
    if text is None:
        return None
    try:
        value = manifest.load(text).seed.get("PYTHONHASHSEED")
    except MalformedFile:
        return None
    return str(value) if value not in (None, "") else None


def _put_back(
    path: str | os.PathLike[str],
    previous: str,
    scratch: str,
    created: bool,
    keep: bool,
    progress: Progress,
) -> list[str]:
    """Switch back to `previous` (leftovers of a failed scratch stage restored first) with
    its DVC outputs, and remove the scratch run unless `keep`. Never raises: what cannot be
    done is returned (and reported) as a warning."""
    from .run import _restore_leftovers

    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        progress(Event("warning", scratch, message=message))

    project = Project.open(path)
    try:
        with project.lock(scratch, "verify"):
            git = project.git
            if git.head_branch() != previous:
                try:
                    tip = git.head_commit()
                    policy = project.policy(tip) if tip else None
                    extra = (policy.checkpoint_resume,) if policy and policy.checkpoint_output \
                        and policy.checkpoint_resume else ()
                    managed = set(project.dvc.managed_paths(extra))
                    managed |= {naming.PARAMS_FILE, naming.RUN_RECORD, naming.REPLAY_MANIFEST}
                    _restore_leftovers(project, managed)
                    git.switch(previous)
                    project.dvc.checkout()
                except MlforkError as exc:
                    warn(f"could not switch back to '{previous}' ({exc}): the workspace is on"
                         f" 'mlfork/{scratch}', which is kept")
                    return warnings
            if created and not keep:
                warnings += remove_run(project, scratch, warn)
    except MlforkError as exc:
        warn(f"the scratch run '{scratch}' could not be cleaned up: {exc}")
    finally:
        project.close()
    return warnings


def remove_run(project: Project, name: str, warn: Any) -> list[str]:
    """Delete a run made by mlfork itself (a scratch fork): its branch, its MLflow run,
    its pending tracking writes and its local state and logs."""
    from ..adapters.tracking import Tracker

    git = project.git
    tip = git.resolve_branch(naming.branch_name(name))
    if tip is None:
        return []
    uri = track.tracking_uri(project, tip)
    experiment = track.experiment_name(project, tip)
    git.delete_branch(naming.branch_name(name), tip)
    for pending in track.pending(project):
        if pending.stem[21:] == name:  # <20-digit time>-<run>.json
            pending.unlink()
    state = project.root / naming.STATE_DIR / f"{name}.json"
    if state.exists():
        state.unlink()
    logs = project.root / naming.LOGS_DIR / name
    if logs.is_dir():
        shutil.rmtree(logs, ignore_errors=True)
    try:
        tracker = Tracker(uri)
        run_id = tracker.find_run(experiment, name)
        if run_id is not None:
            tracker.client.delete_run(run_id)
    except Exception as exc:  # the tracking store is a side channel: warn, never fail
        warn(f"the MLflow run of '{name}' could not be deleted ({exc}): delete it in the"
             " MLflow UI, or run 'mlfork sync --rebuild'")
    return []


# -- helpers -----------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _num(value: float | None) -> str:
    if value is None:
        return "absent"
    if math.isinf(value):
        return "inf"
    return f"{value:.6g}"


def _span(its: Sequence[int]) -> str:
    if not its:
        return "none"
    if len(its) == 1:
        return f"iteration {its[0]}"
    return f"iterations {its[0]} to {its[-1]}"
