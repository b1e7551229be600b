"""The git adapter: the only modules that import pygit2 are this one and git_read.py
(reading; `GitRepo` adds every write to `GitReader`).

It speaks in plain strings and `models.Commit`; pygit2 errors are translated here.
Refs are only ever moved with compare-and-swap: a branch is created under a ref lock
(libgit2's ref transaction), and a commit advances its branch only if the branch still
points at the commit's first parent.

A project may live in a subfolder of its repository (`dvc init --subdir`): `GitRepo.at`
gives a view whose paths are relative to that folder (`root`), while `workdir` stays the
repository's top. Every path this adapter takes or returns is project-relative; a path
outside the project comes back as `../x`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pygit2

from mlfork import naming
from mlfork.adapters.git_read import GitReader, HeadState
from mlfork.errors import (
    DirtyWorkingTree,
    GitError,
    NoGitIdentity,
    NotAGitRepository,
    RunNameTaken,
    WriteError,
)

_WRITE_FAILURES = ("No space left on device", "Read-only file system", "Disk quota exceeded",
                   "Permission denied")


def write_failure(exc: Exception, what: str) -> WriteError | None:
    """A WriteError if `exc` (from libgit2) says the disk is full or read-only."""
    text = str(exc)
    for marker in _WRITE_FAILURES:
        if marker in text:
            return WriteError(what, marker.lower())
    return None


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """Translate libgit2's "no space", "read-only" and like failures into WriteError."""
    try:
        yield
    except (pygit2.GitError, OSError) as exc:
        failure = write_failure(exc, what)
        if failure is not None:
            raise failure from exc
        raise


class GitRepo(GitReader):
    """A repository mlfork reads and writes (refs by compare-and-swap, commits straight into
    the object database, the index and working tree only through checkouts it asks for)."""

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GitRepo:
        try:
            found = pygit2.discover_repository(str(path))
        except pygit2.GitError:
            found = None
        if found is None:
            raise NotAGitRepository(str(path))
        return cls(pygit2.Repository(found))

    @classmethod
    def init(cls, path: str | os.PathLike[str], branch: str = "main") -> GitRepo:
        return cls(pygit2.init_repository(str(path), initial_head=branch))

    def at(self, root: Path) -> GitRepo:
        """A view of this repository whose paths are relative to `root` (a folder in it)."""
        rel = Path(os.path.relpath(Path(root).resolve(), self.workdir)).as_posix()
        return GitRepo(self._repo, "" if rel == "." else rel)

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
            failure = write_failure(exc, f"branch '{branch}'")
            if failure is not None and self._repo.references.get(ref) is None:
                raise failure from exc
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
                raise GitError(f"branch '{branch}' moved while deleting it; left in place")
            txn.remove(ref)

    def move_branch(self, branch: str, expected: str, target: str) -> None:
        """Move a branch to `target` only if it still points at `expected`."""
        ref = "refs/heads/" + branch
        with self._repo.transaction() as txn:
            txn.lock_ref(ref)
            current = self._repo.references.get(ref)
            if current is None or str(current.target) != expected:
                raise GitError(f"branch '{branch}' moved while updating it; left in place")
            txn.set_target(ref, target, message=f"mlfork: fast-forward to {target[:10]}")

    def set_head(self, branch: str) -> None:
        """Point HEAD at a branch without touching the index or the working tree."""
        with _writing("HEAD"):
            self._repo.set_head("refs/heads/" + branch)

    def set_head_state(self, state: HeadState) -> None:
        """Put HEAD back where `head_state()` found it (index and working tree untouched)."""
        if state.branch is not None:
            self._repo.set_head("refs/heads/" + state.branch)
        elif state.commit is not None:
            self._repo.set_head(pygit2.Oid(hex=state.commit))

    def switch(self, branch: str) -> None:
        """`git switch <branch>`: move index, working tree and HEAD. Refuses (naming the
        files) rather than overwrite a change or an untracked file."""
        self._checkout("refs/heads/" + branch, branch)

    def switch_detached(self, commit: str) -> None:
        """`git switch --detach <commit>`."""
        self._checkout(commit, commit[:10])

    def _checkout(self, target: str, shown: str) -> None:
        conflicts = _Conflicts()
        try:
            if target.startswith("refs/"):
                self._repo.checkout(
                    target, strategy=pygit2.enums.CheckoutStrategy.SAFE, callbacks=conflicts
                )
            else:
                obj = self._repo.get(target)
                self._repo.checkout_tree(
                    obj, strategy=pygit2.enums.CheckoutStrategy.SAFE, callbacks=conflicts
                )
                self._repo.set_head(pygit2.Oid(hex=target))
        except pygit2.GitError as exc:
            failure = write_failure(exc, "the working tree")
            if failure is not None:
                raise failure from exc
            paths = [self._rel(p) for p in conflicts.paths]
            if paths:
                raise DirtyWorkingTree(
                    paths, what=f"switching to '{shown}' would overwrite"
                ) from exc
            raise GitError(f"cannot switch to '{shown}': {exc}") from exc

    def force_checkout(self, commit: str) -> None:
        """Make the index and the tracked files match `commit` (HEAD is not moved; untracked
        and ignored files are left alone): a rollback's first step."""
        obj = self._repo.get(commit)
        self._repo.checkout_tree(obj, strategy=pygit2.enums.CheckoutStrategy.FORCE)

    def conflicts_with(self, rev: str, paths: Iterable[str]) -> list[str]:
        """Those of `paths` (untracked in the workspace) that `rev` tracks: a switch to
        `rev` would have to overwrite them."""
        return [p for p in paths if self.is_tracked(rev, p)]

    def restore(self, paths: Iterable[str]) -> None:
        """`git restore --staged --worktree` for these paths (to HEAD); untracked ones removed."""
        paths = [self._p(p) for p in paths]
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
                full = self.workdir / p
                if full.is_file() or full.is_symlink():
                    full.unlink()
                continue
            index.add(pygit2.IndexEntry(p, entry.id, entry.filemode))
        index.write()
        self._repo.checkout_index(
            index=index, paths=paths, strategy=pygit2.enums.CheckoutStrategy.FORCE
        )

    def index_bytes(self) -> bytes | None:
        path = self.git_dir / "index"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def put_index_bytes(self, data: bytes | None) -> None:
        """Put back an index saved with `index_bytes` (byte for byte)."""
        path = self.git_dir / "index"
        if data is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_name("index.mlfork-restore")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self._repo.index.read(force=True)

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
        with _writing("git's index and objects"):
            return self._stage_and_commit(branch, paths, message, parent, sig)

    def _stage_and_commit(
        self, branch: str, paths: Iterable[str], message: str, parent: str,
        sig: pygit2.Signature,
    ) -> str:
        index = self._repo.index
        index.read()
        for p in sorted({self._p(p) for p in paths}):
            full = self.workdir / p
            if full.is_dir() and not full.is_symlink():
                index.add_all([p])  # honours .gitignore
            elif full.exists() or full.is_symlink():
                if not self._repo.path_is_ignored(p) or p in index:
                    index.add(p)
            elif p in index:
                index.remove(p)
            else:  # a folder that went away: its tracked files go with it
                for entry in [e.path for e in index if e.path.startswith(p + "/")]:
                    index.remove(entry)
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
        return self._commit_on(branch, parent, self._tree_with(parent, files), message, sig)

    def commit_object(
        self,
        parent: str,
        files: dict[str, bytes],
        message: str,
        signature: pygit2.Signature | None = None,
        merged: Sequence[str] = (),
    ) -> str:
        """A commit of `files` on top of `parent`, written to the object database only (no
        ref moves): a new branch is then created at it in one step, so that it never
        exists without this commit. `merged`: more parents (a merge commit; the tree is
        `parent`'s with `files`)."""
        sig = self._now(signature)
        tree = self._tree_with(parent, files)
        with _writing("git's objects"):
            return str(self._repo.create_commit(None, sig, sig, message, tree,
                                                [parent, *merged]))

    def _tree_with(self, parent: str, files: dict[str, bytes]) -> pygit2.Oid:
        parent_commit = self._repo.get(parent)
        if parent_commit is None:
            raise GitError(f"commit {parent} not found in the repository")
        builder_index = pygit2.Index()
        builder_index.read_tree(parent_commit.peel(pygit2.Tree))
        with _writing("git's objects"):
            for path, data in files.items():
                blob = self._repo.create_blob(data)
                builder_index.add(
                    pygit2.IndexEntry(self._p(path), blob, pygit2.enums.FileMode.BLOB)
                )
            return builder_index.write_tree(self._repo)

    def _commit_on(
        self, branch: str, parent: str, tree: pygit2.Oid, message: str, sig: pygit2.Signature
    ) -> str:
        """Commit `tree` on `branch`, whose tip must still be `parent` (libgit2 checks it)."""
        try:
            oid = self._repo.create_commit(
                "refs/heads/" + branch, sig, sig, message, tree, [parent]
            )
        except pygit2.GitError as exc:
            failure = write_failure(exc, f"a commit on '{branch}'")
            if failure is not None:
                raise failure from exc
            raise GitError(
                f"branch '{branch}' moved while mlfork was committing to it ({exc});"
                " nothing was lost: check 'git log' and run the command again"
            ) from exc
        return str(oid)

    def add_and_commit_initial(self, paths: Iterable[str], message: str) -> str:
        """The first commit of a new repository (or a commit on HEAD's branch)."""
        sig = self.signature()
        index = self._repo.index
        index.read()
        for p in sorted({self._p(p) for p in paths}):
            index.add(p)
        index.write()
        tree = index.write_tree()
        parents = [] if self._repo.head_is_unborn else [self._repo.head.target]
        return str(self._repo.create_commit("HEAD", sig, sig, message, tree, parents))

    def add_exclude(self, patterns: Iterable[str]) -> list[str]:
        """Add `patterns` (project-relative, `/`-anchored) to `.git/info/exclude`, the
        machine-local ignore file; returns those that were new."""
        path = self.common_dir / "info" / "exclude"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        known = set(text.splitlines())
        new = [f"/{self._p(p.lstrip('/'))}" for p in patterns]
        new = [p for p in dict.fromkeys(new) if p not in known]
        if new:
            path.parent.mkdir(parents=True, exist_ok=True)
            sep = "" if not text or text.endswith("\n") else "\n"
            path.write_text(text + sep + "# DVC outputs (mlfork)\n" + "\n".join(new) + "\n",
                            encoding="utf-8")
        return new


class _Conflicts(pygit2.CheckoutCallbacks):
    """Collects the paths a SAFE checkout refuses to overwrite."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def checkout_notify_flags(self) -> pygit2.enums.CheckoutNotify:
        return pygit2.enums.CheckoutNotify.CONFLICT

    def checkout_notify(self, why: object, path: str, *args: object) -> None:
        self.paths.append(path)
