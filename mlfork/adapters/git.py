"""The git adapter: the only module that imports pygit2.

It speaks in plain strings and `models.Commit`; pygit2 errors are translated here.
Refs are only ever moved with compare-and-swap: a branch is created under a ref lock
(libgit2's ref transaction), and a commit advances its branch only if the branch still
points at the commit's first parent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pygit2

from .. import naming
from ..errors import (
    DirtyWorkingTree,
    MlforkError,
    NoGitIdentity,
    NotAGitRepository,
    RunNameTaken,
)
from ..models import Commit

_DIRTY = (
    pygit2.enums.FileStatus.INDEX_NEW
    | pygit2.enums.FileStatus.INDEX_MODIFIED
    | pygit2.enums.FileStatus.INDEX_DELETED
    | pygit2.enums.FileStatus.INDEX_RENAMED
    | pygit2.enums.FileStatus.INDEX_TYPECHANGE
    | pygit2.enums.FileStatus.WT_NEW
    | pygit2.enums.FileStatus.WT_MODIFIED
    | pygit2.enums.FileStatus.WT_DELETED
    | pygit2.enums.FileStatus.WT_TYPECHANGE
    | pygit2.enums.FileStatus.WT_RENAMED
    | pygit2.enums.FileStatus.CONFLICTED
)


class GitRepo:
    def __init__(self, repo: pygit2.Repository) -> None:
        self._repo = repo
        workdir = repo.workdir
        if workdir is None:
            raise NotAGitRepository(repo.path)
        self.root = Path(workdir).resolve()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GitRepo:
        found = pygit2.discover_repository(str(path))
        if found is None:
            raise NotAGitRepository(str(path))
        return cls(pygit2.Repository(found))

    @classmethod
    def init(cls, path: str | os.PathLike[str], branch: str = "main") -> GitRepo:
        return cls(pygit2.init_repository(str(path), initial_head=branch))

    # -- identity ---------------------------------------------------------------------------

    def signature(self) -> pygit2.Signature:
        """The committer, as git would pick it (environment first, then config)."""
        name = os.environ.get("GIT_AUTHOR_NAME") or os.environ.get("GIT_COMMITTER_NAME")
        email = os.environ.get("GIT_AUTHOR_EMAIL") or os.environ.get("GIT_COMMITTER_EMAIL")
        try:
            cfg = self._repo.config
            name = name or cfg["user.name"]
            email = email or cfg["user.email"]
        except KeyError:
            raise NoGitIdentity() from None
        if not name or not email:
            raise NoGitIdentity()
        return pygit2.Signature(name, email)

    def _now(self, signature: pygit2.Signature | None) -> pygit2.Signature:
        """The identity of `signature` (checked once per command), timed now: every commit
        carries the time it was made."""
        if signature is None:
            return self.signature()
        return pygit2.Signature(signature.name, signature.email)

    # -- reading ------------------------------------------------------------------------------

    def head_branch(self) -> str | None:
        """The checked-out branch (`mlfork/base`), or None when detached or unborn."""
        if self._repo.head_is_detached or self._repo.head_is_unborn:
            return None
        return self._repo.head.shorthand

    def head_commit(self) -> str | None:
        if self._repo.head_is_unborn:
            return None
        return str(self._repo.head.target)

    def resolve_branch(self, branch: str) -> str | None:
        ref = self._repo.references.get("refs/heads/" + branch)
        return str(ref.target) if ref is not None else None

    def branches(self, prefix: str = "") -> list[str]:
        """Local branch names that start with `prefix`, sorted."""
        return sorted(b for b in self._repo.branches.local if b.startswith(prefix))

    def commit(self, rev: str) -> Commit:
        obj = self._repo.get(rev)
        if obj is None or not isinstance(obj, pygit2.Commit):
            raise MlforkError(f"commit {rev} not found in the repository")
        return self._to_commit(obj)

    def _to_commit(self, c: pygit2.Commit) -> Commit:
        return Commit(
            id=str(c.id),
            message=c.message,
            time=c.commit_time,
            parents=tuple(str(p) for p in c.parent_ids),
            trailers=naming.parse_trailers(c.message),
        )

    def first_parent_walk(self, start: str) -> Iterator[Commit]:
        """Commits from `start` back along first parents, newest first."""
        walker = self._repo.walk(start, pygit2.enums.SortMode.TOPOLOGICAL)
        walker.simplify_first_parent()
        for c in walker:
            yield self._to_commit(c)

    def _object_at(self, rev: str, path: str) -> pygit2.Object | None:
        """The blob or tree at `path` in commit `rev`, or None."""
        commit = self._repo.get(rev)
        if commit is None:
            return None
        try:
            entry = commit.peel(pygit2.Tree)[path]
        except KeyError:
            return None
        return self._repo.get(entry.id)

    def read(self, rev: str, path: str) -> bytes | None:
        """A file's bytes at a commit, or None if the commit has no such file."""
        blob = self._object_at(rev, path)
        return blob.data if isinstance(blob, pygit2.Blob) else None

    def has_path(self, rev: str, path: str) -> bool:
        return self._object_at(rev, path) is not None

    def subdirs(self, rev: str, path: str) -> list[str]:
        """Names of the folders directly inside `path` at `rev` ([] if there is none)."""
        tree = self._object_at(rev, path)
        if not isinstance(tree, pygit2.Tree):
            return []
        return sorted(str(e.name) for e in tree if e.type == pygit2.enums.ObjectType.TREE)

    def export_dir(self, rev: str, path: str, dest: Path) -> bool:
        """Write the folder `path` as of `rev` into `dest`; False if it does not exist there."""
        tree = self._object_at(rev, path)
        if not isinstance(tree, pygit2.Tree):
            return False
        self._export_tree(tree, dest)
        return True

    def _export_tree(self, tree: pygit2.Tree, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for entry in tree:
            obj = self._repo.get(entry.id)
            name = str(entry.name)
            if isinstance(obj, pygit2.Tree):
                self._export_tree(obj, dest / name)
            elif isinstance(obj, pygit2.Blob):
                (dest / name).write_bytes(obj.data)

    def dirty_paths(self, ignore: Iterable[str] = ()) -> list[str]:
        """Changed, staged and untracked paths (git-ignored ones excluded), sorted."""
        skip = tuple(ignore)
        paths = [
            p
            for p, flags in self._repo.status(untracked_files="all").items()
            if flags & _DIRTY and not p.startswith(skip or ("\0",))
        ]
        return sorted(paths)

    def require_clean(self) -> None:
        dirty = self.dirty_paths()
        if dirty:
            raise DirtyWorkingTree(dirty)

    def is_ignored(self, path: str) -> bool:
        return bool(self._repo.path_is_ignored(path))

    # -- writing ------------------------------------------------------------------------------

    def create_branch(self, branch: str, target: str) -> None:
        """Create `refs/heads/<branch>` at `target`, failing if it exists (even in a race)."""
        ref = "refs/heads/" + branch
        try:
            with self._repo.transaction() as txn:
                txn.lock_ref(ref)
                if self._repo.references.get(ref) is not None:
                    raise RunNameTaken(naming.run_from_ref(ref) or branch)
                txn.set_target(ref, target, message=f"mlfork: create {branch}")
        except (pygit2.AlreadyExistsError, pygit2.GitError) as exc:
            # Another process holds the ref lock or created the ref first.
            raise RunNameTaken(naming.run_from_ref(ref) or branch) from exc

    def delete_branch(self, branch: str, expected: str) -> None:
        """Delete a branch only if it still points at `expected`."""
        ref = "refs/heads/" + branch
        with self._repo.transaction() as txn:
            txn.lock_ref(ref)
            current = self._repo.references.get(ref)
            if current is None:
                return
            if str(current.target) != expected:
                raise MlforkError(f"branch '{branch}' moved while deleting it; left in place")
            txn.remove(ref)

    def set_head(self, branch: str) -> None:
        """Point HEAD at a branch without touching the index or the working tree."""
        self._repo.set_head("refs/heads/" + branch)

    def switch(self, branch: str) -> None:
        """`git switch <branch>`: move index, working tree and HEAD (refuses to overwrite)."""
        ref = "refs/heads/" + branch
        try:
            self._repo.checkout(ref, strategy=pygit2.enums.CheckoutStrategy.SAFE)
        except pygit2.GitError as exc:
            raise MlforkError(f"cannot switch to '{branch}': {exc}") from exc

    def restore(self, paths: Iterable[str]) -> None:
        """`git restore --staged --worktree` for these paths (to HEAD); untracked ones removed."""
        paths = list(paths)
        if not paths:
            return
        head = self._repo.head.peel(pygit2.Commit)
        index = self._repo.index
        index.read()
        tree = head.tree
        for p in paths:
            try:
                entry = tree[p]
            except KeyError:
                if p in index:
                    index.remove(p)
                full = self.root / p
                if full.is_file() or full.is_symlink():
                    full.unlink()
                continue
            index.add(pygit2.IndexEntry(p, entry.id, entry.filemode))
        index.write()
        self._repo.checkout_index(
            index=index, paths=paths, strategy=pygit2.enums.CheckoutStrategy.FORCE
        )

    def commit_paths(
        self,
        branch: str,
        paths: Iterable[str],
        message: str,
        parent: str,
        signature: pygit2.Signature | None = None,
    ) -> str:
        """Stage exactly `paths` (deleted ones are removed) and commit on `branch`.

        The branch moves only if it still points at `parent` (compare-and-swap). An unchanged
        tree still makes a commit: every checkpoint has one.
        """
        sig = self._now(signature)
        index = self._repo.index
        index.read()
        for p in sorted(set(paths)):
            full = self.root / p
            if full.is_dir() and not full.is_symlink():
                index.add_all([p])  # honours .gitignore
            elif full.exists() or full.is_symlink():
                if not self._repo.path_is_ignored(p):
                    index.add(p)
            elif p in index:
                index.remove(p)
        index.write()
        return self._commit_on(branch, parent, index.write_tree(), message, sig)

    def commit_tree_files(
        self,
        branch: str,
        parent: str,
        files: dict[str, bytes],
        message: str,
        signature: pygit2.Signature | None = None,
    ) -> str:
        """Commit `files` (path -> bytes) on top of `parent` without touching index or workspace.

        Used to write a fork's first commit when the workspace stays where it is.
        """
        sig = self._now(signature)
        parent_commit = self._repo.get(parent)
        if parent_commit is None:
            raise MlforkError(f"commit {parent} not found in the repository")
        base = parent_commit.peel(pygit2.Tree)
        builder_index = pygit2.Index()
        builder_index.read_tree(base)
        for path, data in files.items():
            blob = self._repo.create_blob(data)
            builder_index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
        return self._commit_on(branch, parent, builder_index.write_tree(self._repo), message, sig)

    def _commit_on(
        self, branch: str, parent: str, tree: pygit2.Oid, message: str, sig: pygit2.Signature
    ) -> str:
        """Commit `tree` on `branch`, whose tip must still be `parent` (libgit2 checks it)."""
        try:
            oid = self._repo.create_commit(
                "refs/heads/" + branch, sig, sig, message, tree, [parent]
            )
        except pygit2.GitError as exc:
            raise MlforkError(
                f"branch '{branch}' moved while mlfork was committing to it ({exc});"
                " nothing was lost: check 'git log' and run the command again"
            ) from exc
        return str(oid)

    def add_and_commit_initial(self, paths: Iterable[str], message: str) -> str:
        """The first commit of a new repository (or a commit on HEAD's branch)."""
        sig = self.signature()
        index = self._repo.index
        index.read()
        for p in sorted(set(paths)):
            index.add(p)
        index.write()
        tree = index.write_tree()
        parents = [] if self._repo.head_is_unborn else [self._repo.head.target]
        return str(self._repo.create_commit("HEAD", sig, sig, message, tree, parents))
