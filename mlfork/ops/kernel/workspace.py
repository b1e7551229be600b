"""The workspace around a writing command: what it finds, what it may touch, and what it
puts back when it fails.

- `settle`: before a command changes anything, tell apart what is in the workspace: the
  leftovers of an mlfork that died mid-stage (put back), the results of a plain
  `dvc repro` on a run branch (recorded as a commit of the run, never thrown away), DVC's
  declared outputs (DVC's, never in the way), and the user's uncommitted work (refused,
  named).
- (guard.py: what a command may change before its first checkpoint, put back on failure)
- `switch`: check out another branch the way a DVC user would (`git switch` then
  `dvc checkout` of what the cache has), moving DVC outputs that are in git's way aside.
- `ensure_inputs`: fetch from the DVC remote exactly the inputs a stage needs that neither
  the workspace nor the cache has; without a remote, say what to run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlfork import faults, naming
from mlfork.errors import DirtyWorkingTree, GitError
from mlfork.models import Pipeline
from mlfork.ops.kernel.guard import Guard
from mlfork.ops.kernel.project import Project, ProjectLock

MLFORK_FILES = (naming.RUN_RECORD, naming.REPLAY_MANIFEST)


# -- what is in the workspace --------------------------------------------------------------------


@dataclass
class Found:
    """The workspace's uncommitted state, sorted by whose it is."""

    outputs: list[str] = field(default_factory=list)  # DVC's declared outputs: never in the way
    dvc: list[str] = field(default_factory=list)  # DVC and mlfork files, params files
    foreign: list[str] = field(default_factory=list)  # the user's
    lock_changed: bool = False  # a dvc.lock differs from HEAD's: a plain `dvc repro` ran


def owned_paths(pipeline: Pipeline, extra: Iterable[str] = ()) -> set[str]:
    """Files DVC and mlfork own that are not outputs: DVC files, lock files, params files,
    the .gitignore files DVC keeps, mlfork's own files, and `extra` (a hand-off's .dvc)."""
    outs = {o.path for o in pipeline.outs()}
    paths = {p for p in pipeline.declared() if p not in outs} | set(pipeline.params_files())
    paths |= {naming.PARAMS_FILE, *MLFORK_FILES, *extra}
    return paths - set(pipeline.top_metrics) - set(pipeline.top_plots)


def output_paths(pipeline: Pipeline) -> list[str]:
    return sorted({o.path for o in pipeline.outs()} | set(pipeline.top_metrics)
                  | set(pipeline.top_plots))


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def survey(project: Project, pipeline: Pipeline, extra: Iterable[str] = ()) -> Found:
    status = project.git.status()
    owned = owned_paths(pipeline, extra)
    outputs = output_paths(pipeline)
    strays = project.strays()
    found = Found()
    for path in status.paths:
        if path.startswith(naming.LOCAL_DIR + "/"):
            continue
        if _under(path, outputs) or path in strays:
            found.outputs.append(path)
        elif path in owned:
            found.dvc.append(path)
            if path in pipeline.lockfiles:
                found.lock_changed = True
        else:
            found.foreign.append(path)
    return found


def check(
    project: Project, pipeline: Pipeline, *, run: str | None, extra: Iterable[str] = ()
) -> Found:
    """The refusals of `settle`, made before a command takes the lock or writes anything:
    the user's uncommitted work (not DVC's outputs), and DVC's files changed where no
    plain `dvc repro` can be recorded (off a run branch, or without a changed dvc.lock).
    Leftovers of an mlfork that died mid-stage are not refused: `settle` puts them back."""
    found = survey(project, pipeline, extra)
    if found.foreign:
        raise DirtyWorkingTree(found.foreign)
    if found.dvc and project.last_work() is None and (run is None or not found.lock_changed):
        what = "DVC's files have uncommitted changes" if found.lock_changed else (
            "the working tree has uncommitted changes"
        )
        raise DirtyWorkingTree(
            found.dvc, what=what,
            fix="commit them ('git add' and 'git commit'), or discard them ('git checkout --"
                " FILE'), first",
        )
    return found


def settle(
    project: Project,
    lock: ProjectLock,
    *,
    run: str | None,
    extra: Iterable[str] = (),
    note: Callable[[str], None] | None = None,
) -> str | None:
    """Make the workspace ready for a command that changes it (under the lock, after
    `check`). Returns the commit that recorded a plain `dvc repro`, if one was made.

    - An mlfork that died mid-stage (the lock says so) left leftovers: DVC's and mlfork's
      files go back to HEAD, and the outputs the cache holds are linked again.
    - On run `run`'s branch, the results of a plain `dvc repro` (a changed dvc.lock with
      the files it changed) become a commit of the run: it belongs to the next iteration.
    - Anything else uncommitted that is not a DVC output is the user's: DirtyWorkingTree.
    """
    pipeline = project.pipeline()
    if lock.interrupted_work is not None:
        found = survey(project, pipeline, extra)
        if found.foreign:
            raise DirtyWorkingTree(found.foreign)
        if found.dvc:
            project.git.restore(found.dvc)
            project.dvc.reset()
        project.dvc.checkout(output_paths(project.pipeline()))
        lock.previous.pop("working", None)  # handled: a nested command must not redo it
        lock.idle()
        return None
    found = check(project, pipeline, run=run, extra=extra)
    if not found.dvc or run is None:
        return None
    commit = record_repro(project, run, pipeline, found, note)
    project.dvc.reset()
    return commit


def record_repro(
    project: Project, run: str, pipeline: Pipeline, found: Found,
    note: Callable[[str], None] | None,
) -> str:
    """Commit what a plain `dvc repro` changed on run `run`'s branch (DVC's files, params,
    and the outputs git tracks) as a commit of the run without checkpoint trailers."""
    git = project.git
    branch = naming.branch_name(run)
    parent = git.resolve_branch(branch)
    if parent is None:
        raise GitError(f"branch '{branch}' is gone: the plain 'dvc repro' results stay"
                       " uncommitted in the workspace")
    paths = sorted(set(found.dvc) | {
        p for p in found.outputs if not git.is_ignored(p) and p not in project.strays()
    })
    changed = _changed_stages(project, parent, pipeline)
    subject = f"{run}: record a plain 'dvc repro'" + (
        f" ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})" if changed else ""
    )
    body = "Results of 'dvc repro' run in the workspace, recorded by mlfork.\n\nFiles:\n" + (
        "\n".join(f"  {p}" for p in paths)
    )
    commit = git.commit_paths(branch, paths, subject + "\n\n" + body + "\n", parent=parent)
    if note is not None:
        from mlfork.ops.kernel import lineage

        rec = project.read_record(parent)
        nxt = lineage.position(project, parent).done(rec.stages if rec else [])
        note(
            f"recorded the results of a plain 'dvc repro' on '{branch}' as commit"
            f" {commit[:10]} ({', '.join(paths)}): they are part of the run, and belong to"
            f" its iteration {nxt}"
        )
        if naming.PARAMS_FILE in paths and project.has_conf(parent):
            note(
                "params.yaml is composed from conf/ for every iteration: an edit of it holds"
                " for that commit only; to go on with other values, fork with them"
                f" ('mlfork branch --from {run} KEY=VALUE')"
            )
    return commit


def workspace_locks(root: Path, locks: Iterable[str]) -> list[tuple[str, bytes | None]]:
    """(path, text) of these dvc.lock files in the workspace (None: not there)."""
    return [(lock, (root / lock).read_bytes() if (root / lock).exists() else None)
            for lock in locks]


def _changed_stages(project: Project, parent: str, pipeline: Pipeline) -> list[str]:
    from mlfork.adapters.dvc_files import project_entries

    locks = pipeline.lockfiles or ("dvc.lock",)  # one beside each dvc.yaml
    before = [(lock, project.git.read(parent, lock)) for lock in locks]
    after = workspace_locks(project.root, locks)
    old, new = project_entries(before), project_entries(after)
    old_deps, new_deps = project_entries(before, "deps"), project_entries(after, "deps")
    changed = []
    for stage in pipeline.stages:
        outs = [o.path for o in stage.outs]
        if any(old.get(p) != new.get(p) for p in outs) or any(
            old_deps.get(d) != new_deps.get(d) for d in stage.deps
        ):
            changed.append(stage.name)
    return changed


# -- the guard -----------------------------------------------------------------------------------


# -- switching ---------------------------------------------------------------------------------


def switch(
    project: Project,
    guard: Guard,
    lock: ProjectLock,
    branch: str,
    *,
    required: Iterable[str] = (),
    note: Callable[[str], None] | None = None,
) -> None:
    """Check out `branch` as `git switch` + `dvc pull` (with a remote) or `dvc checkout`
    (without) would: DVC outputs in git's way (a `cache: false` metrics file a plain
    `dvc repro` left untracked) are moved to .mlfork/local/displaced/ rather than block
    the switch; with a DVC remote, the outputs the target records that the cache lacks are
    fetched (exactly those); the outputs the cache holds are linked. Without a remote,
    outputs the cache lacks are left to the stages to produce, except `required` ones (a
    checkpoint hand-off): MissingData names the `dvc pull` to run."""
    git = project.git
    target = git.resolve_branch(branch)
    if target is None:
        raise GitError(f"branch '{branch}' does not exist: nothing to switch to")
    run = naming.run_from_ref(branch)
    if run is not None:
        from mlfork.ops.kernel import worktrees

        worktrees.check_free(project, run)
    pipeline = project.pipeline()
    status = git.status()
    outputs = output_paths(pipeline)
    strays = project.strays()
    head = git.head_commit() or target
    in_way = git.conflicts_with(target, [
        p for p in status.untracked if _under(p, outputs) or p in strays
    ])
    in_way += [p for p in status.changed if _under(p, outputs)
               and git.read(target, p) != git.read(head, p)]
    guard.save(output_paths(pipeline) + sorted(owned_paths(pipeline)), pipeline)
    lock.work(switch=branch)
    for rel in in_way:
        if git.is_tracked(head, rel):
            moved = _copy_aside(project, guard, rel)
            git.restore([rel])
        else:
            moved = guard.displace(rel)
        if note is not None:
            note(f"moved '{rel}' (a DVC output in the way of the switch) to"
                 f" {os.path.relpath(moved, project.root)}")
    git.switch(branch)
    faults.point("switch.git")
    project.dvc.reset()
    new = project.pipeline()
    # what git did not touch (ignored, untracked) is as it was before the switch
    guard.save([p for p in output_paths(new) + sorted(owned_paths(new))
                if not git.is_tracked(target, p)], new)
    materialize(project, branch, required=required, note=note)


def materialize(
    project: Project,
    branch: str,
    *,
    required: Iterable[str] = (),
    note: Callable[[str], None] | None = None,
) -> None:
    """DVC's part of checking out `branch` (checked out already): with a DVC remote, the
    outputs its DVC files record that the cache lacks are fetched; without one, only
    those a stage cannot do without (MissingData otherwise); then what the cache holds is
    linked into the workspace."""
    new = project.pipeline()
    outs = [o.path for o in new.outs() if o.cache]
    missing = project.dvc.missing_from_cache(outs)
    needed = [p for p in missing if p in set(required) | set(absent_inputs(project, new))]
    if missing and project.dvc.default_remote() is not None:
        ensure_inputs(project, missing, f"'{branch}' records it", note)
    elif needed:
        ensure_inputs(project, needed, f"'{branch}' needs it", note)  # raises MissingData
    project.dvc.checkout(outs)


def _copy_aside(project: Project, guard: Guard, rel: str) -> Path:
    dest = project.local_here("displaced", guard.dir.name, rel)
    shutil.copy2(project.root / rel, dest)
    return dest


# -- inputs --------------------------------------------------------------------------------------


def absent_inputs(project: Project, pipeline: Pipeline) -> list[str]:
    """The data sources (`.dvc`-tracked data) a stage depends on that are not in the
    workspace: `dvc repro` would fail on them (`dvc checkout`, or `dvc pull`, brings them).
    The checkpoint hand-off's resume input is not one: mlfork writes it each iteration."""
    used = {d for s in pipeline.stages for d in s.deps}
    resume = project.policy(project.git.head_commit() or "").checkpoint_resume \
        if project.git.head_commit() else None
    return [
        o.path for o in pipeline.sources
        if o.cache and o.path != resume
        and any(_under(d, [o.path]) or _under(o.path, [d]) for d in used)
        and not (project.root / o.path).exists()
    ]


def ensure_inputs(
    project: Project,
    paths: list[str],
    why: str,
    note: Callable[[str], None] | None = None,
) -> int:
    """Fetch `paths` (outputs the workspace's DVC files record, missing from the cache)
    from the DVC remote; MissingData (with the `dvc pull` to run) if that cannot be done."""
    if not paths:
        return 0
    count = project.dvc.fetch(paths, why)
    remote = project.dvc.default_remote()
    if note is not None:
        note(f"fetched {count} object{'s' * (count != 1)} from DVC remote '{remote}' for"
             f" {', '.join(paths)}")
    return count
