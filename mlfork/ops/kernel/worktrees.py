"""The git worktrees mlfork runs forks in (`mlfork sweep`, `mlfork resume A B --jobs J`).

Each job gets a worktree of its own under the main worktree's `.mlfork/local/worktrees/`,
with the run's branch checked out. It shares with the main worktree what must be shared:
git's objects and refs (git does that), the DVC cache (its `.dvc/config.local` points at
the main worktree's cache), and mlfork's tracking store, outbox, run states and logs
(`Project.home`). The main worktree's files are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from mlfork import naming
from mlfork.errors import GitError, RunBusy
from mlfork.ops.kernel import lock as locks
from mlfork.ops.kernel.project import Project

OWNER = "mlfork-owner.json"  # in the worktree's git directory: the process that made it


def folder_of(project: Project, run: str) -> Path:
    return project.home / naming.LOCAL_DIR / "worktrees" / run


def check_free(project: Project, run: str) -> None:
    """Refuse to work on a run whose branch another worktree has checked out (two
    workspaces would commit to one branch); a worktree mlfork made for a job that is no
    longer alive is removed instead (what it held is committed, or redone by `resume`)."""
    found = project.git.worktrees().get(naming.branch_name(run))
    if found is None:
        return
    folder, admin = found
    if folder == project.git.workdir:
        return
    if _ours(project, folder) and not in_use(project, admin):
        remove(project, folder)
        return
    raise RunBusy(run, str(folder))


def _ours(project: Project, folder: Path) -> bool:
    base = (project.home / naming.LOCAL_DIR / "worktrees").resolve()
    return folder.resolve().parent == base


def in_use(project: Project, admin: Path) -> bool:
    """Is a live process working in the worktree (its mlfork, or the sweep that made it)?"""
    held = locks.record_of(project, admin / naming.lock_name(project.git.prefix))
    try:
        owner = json.loads((admin / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        owner = {}
    return locks.alive(held) or (isinstance(owner, dict) and locks.alive(owner))


def add(project: Project, run: str) -> Path:
    """A worktree with run `run`'s branch checked out, its DVC cache the project's; the
    project's folder in it (the worktree's root, or the same subfolder as here)."""
    import psutil

    check_free(project, run)
    folder = folder_of(project, run)
    if folder.exists():  # left by a sweep killed before git registered it
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _git(project, "worktree", "add", "--quiet", str(folder), naming.branch_name(run),
         what=f"make a worktree for run '{run}'")
    admin = project.git.worktrees().get(naming.branch_name(run), (folder, None))[1]
    if admin is not None:
        owner = {"pid": os.getpid(), "started": psutil.Process().create_time()}
        (admin / OWNER).write_text(json.dumps(owner), encoding="utf-8")
    root = folder / project.git.prefix if project.git.prefix else folder
    share_cache(project, root)
    return root


def share_cache(project: Project, root: Path) -> None:
    """Point the DVC project at `root` at this project's cache (in its machine-local
    `.dvc/config.local`, on top of a copy of this project's own)."""
    from configobj import ConfigObj

    mine = project.root / ".dvc" / "config.local"
    config = ConfigObj(str(mine) if mine.exists() else None, encoding="utf-8")
    config.filename = str(root / ".dvc" / "config.local")
    config.setdefault("cache", {})["dir"] = str(Path(project.dvc.cache_dir).resolve())
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    config.write()


def remove(project: Project, folder: Path) -> None:
    """Remove a job's worktree (its branch stays, with every checkpoint committed)."""
    if folder.exists():
        _git(project, "worktree", "remove", "--force", "--force", str(folder),
             what=f"remove the worktree {folder}", check=False)
        shutil.rmtree(folder, ignore_errors=True)
    _git(project, "worktree", "prune", what="prune worktrees", check=False)


def _git(project: Project, *args: str, what: str, check: bool = True) -> None:
    from mlfork.adapters.git_remote import first_error, run_git

    for attempt in range(3):  # git's own index.lock / worktree locks: brief races
        proc = run_git(project.git.workdir, *args, what=what)
        if proc.returncode == 0 or not check:
            return
        if "lock" not in proc.stderr or attempt == 2:
            raise GitError(f"could not {what}: {first_error(proc)}")
        time.sleep(0.2)
