"""The workspace around a writing command: what it finds, what it may touch, and what it
puts back when it fails.

- `settle`: before a command changes anything, tell apart what is in the workspace: the
  leftovers of an mlfork that died mid-stage (put back), the results of a plain
  `dvc repro` on a run branch (recorded as a commit of the run, never thrown away), DVC's
  declared outputs (DVC's, never in the way), and the user's uncommitted work (refused,
  named).
- `Guard`: everything a command may change before its first checkpoint (HEAD, the branches
  it creates, the index, the files DVC and mlfork own, the untracked files it moves out of
  a switch's way), saved so that a failure puts it all back byte for byte. Files are saved
  as hard links, not copies: DVC replaces outputs, it does not write into them.
- `switch`: check out another branch the way a DVC user would (`git switch` then
  `dvc checkout` of what the cache has), moving DVC outputs that are in git's way aside.
- `ensure_inputs`: fetch from the DVC remote exactly the inputs a stage needs that neither
  the workspace nor the cache has; without a remote, say what to run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlfork import faults, naming
from mlfork.errors import DirtyWorkingTree, GitError
from mlfork.models import Pipeline
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


def _changed_stages(project: Project, parent: str, pipeline: Pipeline) -> list[str]:
    from mlfork.adapters.dvc import lock_deps, lock_outputs

    before = project.git.read(parent, "dvc.lock")
    path = project.root / "dvc.lock"
    after = path.read_bytes() if path.exists() else None
    old, new = lock_outputs(before), lock_outputs(after)
    old_deps, new_deps = lock_deps(before), lock_deps(after)
    changed = []
    for stage in pipeline.stages:
        outs = [o.path for o in stage.outs]
        if any(old.get(p) != new.get(p) for p in outs) or any(
            old_deps.get(d) != new_deps.get(d) for d in stage.deps
        ):
            changed.append(stage.name)
    return changed


# -- the guard -----------------------------------------------------------------------------------


class Guard:
    """Saves what a command may change until its first checkpoint; `rollback` puts it back
    byte for byte (refs, HEAD, index, the guarded files, the untracked files moved aside,
    the cache objects mlfork added), `release` keeps the command's work."""

    def __init__(self, project: Project) -> None:
        self.project = project
        git = project.git
        self.head = git.head_state()
        self.index = git.index_bytes()
        self.dir = project.local("guard", f"{os.getpid()}-{time.time_ns()}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.saved: dict[str, bool] = {}  # path -> it existed (then it is saved under dir)
        self.created: list[str] = []  # branches this command created
        self.displaced: list[tuple[Path, Path]] = []  # (original, where it was moved)
        self.cache_objects: list[Path] = []
        self.active = True

    def save(self, paths: Iterable[str], pipeline: Pipeline | None = None) -> None:
        """Save these project-relative paths as they are now (once each: the first state
        is the one to put back). The `persist: true` outputs of `pipeline` are copied, not
        linked: DVC keeps those in place and a stage may write into them."""
        copied = {o.path for o in pipeline.outs() if o.persist} if pipeline else set()
        for rel in paths:
            rel = rel.strip("/")
            if not rel or rel.startswith(naming.LOCAL_DIR) or _under(
                rel, [s for s, existed in self.saved.items() if existed or s == rel]
            ):
                continue
            src = self.project.root / rel
            exists = src.exists() or src.is_symlink()
            self.saved[rel] = exists
            if exists:
                _link_tree(src, self.dir / "files" / rel, copy=rel in copied)

    def created_branch(self, branch: str) -> None:
        self.created.append(branch)

    def added_cache_object(self, path: Path) -> None:
        self.cache_objects.append(path)

    def displace(self, rel: str) -> Path:
        """Move an untracked DVC output out of a switch's way (kept, never deleted)."""
        src = self.project.root / rel
        dest = self.project.local("displaced", self.dir.name, rel)
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(src, dest)
        self.displaced.append((src, dest))
        return dest

    def release(self) -> None:
        """The command's first checkpoint is committed: its work stays, the saved state
        goes (what was moved aside stays in .mlfork/local/displaced/)."""
        if self.active:
            self.active = False
            shutil.rmtree(self.dir, ignore_errors=True)

    def rollback(self) -> None:
        """Put back everything as it was when the guard was made."""
        if not self.active:
            return
        self.active = False
        git = self.project.git
        try:
            if self.head.commit is not None:
                git.force_checkout(self.head.commit)
            faults.point("guard.rollback")
            git.set_head_state(self.head)
            for branch in self.created:
                tip = git.resolve_branch(branch)
                if tip is not None:
                    git.delete_branch(branch, tip)
            git.put_index_bytes(self.index)
            root = self.project.root
            for rel in sorted(self.saved, key=len, reverse=True):
                _remove(root / rel)
            present = [rel for rel, existed in self.saved.items() if existed]
            for rel in sorted(present):
                if _under(rel, [p for p in present if p != rel]):
                    continue  # it came back with the folder that holds it
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.dir / "files" / rel, target)
            for original, moved in reversed(self.displaced):
                if moved.exists() or moved.is_symlink():
                    _remove(original)
                    original.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(moved, original)
            for obj in self.cache_objects:
                obj.unlink(missing_ok=True)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.project.close()


def _link_tree(src: Path, dest: Path, copy: bool = False) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and not src.is_symlink():
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (dest / rel).mkdir(parents=True, exist_ok=True)
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                _link_one(Path(dirpath) / name, dest / rel / name, copy)
        return
    _link_one(src, dest, copy)


def _link_one(src: Path, dest: Path, copy: bool) -> None:
    if dest.exists() or dest.is_symlink():
        return  # saved earlier (with a folder that holds it): the older state wins
    if not copy:
        try:
            os.link(src, dest, follow_symlinks=False)
            return
        except OSError:
            pass
    if src.is_symlink():
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copy2(src, dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def guarded(project: Project, lock: ProjectLock) -> Iterator[Guard]:
    """A Guard around a block: the block's failure before `release` rolls everything back
    (and the workspace is consistent again: the lock says so); success releases it."""
    guard = Guard(project)
    try:
        yield guard
    except BaseException:
        if guard.active:
            guard.rollback()
            lock.idle()
        raise
    guard.release()


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
    outs = [o.path for o in new.outs() if o.cache]
    missing = project.dvc.missing_from_cache(outs)
    needed = [p for p in missing if p in set(required) | set(absent_inputs(project, new))]
    if missing and project.dvc.default_remote() is not None:
        ensure_inputs(project, missing, f"'{branch}' records it", note)
    elif needed:
        ensure_inputs(project, needed, f"'{branch}' needs it", note)  # raises MissingData
    project.dvc.checkout(outs)


def _copy_aside(project: Project, guard: Guard, rel: str) -> Path:
    dest = project.local("displaced", guard.dir.name, rel)
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
