"""What a command may change before its first checkpoint, saved so that a failure puts it
all back byte for byte: HEAD, the branches it creates, the index, the files DVC and mlfork
own (as hard links: DVC replaces outputs, it does not write into them), the untracked files
it moves out of a switch's way, and the cache objects it adds."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlfork import faults, naming
from mlfork.models import Pipeline
from mlfork.ops.kernel.project import Project, ProjectLock


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class Guard:
    """Saves what a command may change until its first checkpoint; `rollback` puts it back
    byte for byte (refs, HEAD, index, the guarded files, the untracked files moved aside,
    the cache objects mlfork added), `release` keeps the command's work."""

    def __init__(self, project: Project) -> None:
        self.project = project
        git = project.git
        self.head = git.head_state()
        self.index = git.index_bytes()
        self.dir = project.local_here("guard", f"{os.getpid()}-{time.time_ns()}")
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
        dest = self.project.local_here("displaced", self.dir.name, rel)
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
