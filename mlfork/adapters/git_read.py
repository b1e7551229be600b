"""Reading a git repository: commits, trees and blobs at any commit, the refs and HEAD,
the working tree's status. `GitRepo` (git.py) adds everything that writes; both speak
project-relative paths (see git.py on projects in a subfolder)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from mlfork import naming
from mlfork.errors import DirtyWorkingTree, GitError, NotAGitRepository
from mlfork.models import Commit

_FS = pygit2.enums.FileStatus

_CHANGED = (
    _FS.INDEX_NEW | _FS.INDEX_MODIFIED | _FS.INDEX_DELETED | _FS.INDEX_RENAMED
    | _FS.INDEX_TYPECHANGE | _FS.WT_MODIFIED | _FS.WT_DELETED | _FS.WT_TYPECHANGE
    | _FS.WT_RENAMED | _FS.CONFLICTED
)

@dataclass
class Status:
    """`git status` of the working tree, project-relative: tracked files with changes
    (staged or not) and untracked files (ignored ones excluded)."""

    changed: set[str] = field(default_factory=set)
    untracked: set[str] = field(default_factory=set)

    @property
    def paths(self) -> list[str]:
        return sorted(self.changed | self.untracked)

@dataclass(frozen=True)
class RemoteBranch:
    remote: str
    name: str  # the branch name after the prefix asked for
    ref: str  # refs/remotes/<remote>/...
    tip: str


@dataclass(frozen=True)
class HeadState:
    """Where HEAD is: on a branch (`branch` set), detached at `commit`, or unborn."""

    branch: str | None
    commit: str | None


class GitReader:
    def __init__(self, repo: pygit2.Repository, prefix: str = "") -> None:
        self._repo = repo
        workdir = repo.workdir
        if workdir is None:
            raise NotAGitRepository(repo.path)
        self.workdir = Path(workdir).resolve()
        self.prefix = prefix.strip("/")
        self.root = self.workdir / self.prefix if self.prefix else self.workdir
        self._found: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._commits: dict[str, Commit] = {}  # by id: a commit never changes

    @property
    def git_dir(self) -> Path:
        """This worktree's git directory (`.git/worktrees/NAME/` in a linked worktree)."""
        return Path(self._repo.path)

    @property
    def common_dir(self) -> Path:
        """The git directory every worktree shares (refs, objects, info/exclude)."""
        pointer = self.git_dir / "commondir"
        try:
            return (self.git_dir / pointer.read_text(encoding="utf-8").strip()).resolve()
        except OSError:
            return self.git_dir.resolve()

    @property
    def main_workdir(self) -> Path:
        """The main worktree's folder: this one's, unless this is a linked worktree
        (`git worktree add`) of a repository whose git directory is `<main>/.git`."""
        common = self.common_dir
        if common == self.git_dir.resolve() or common.name != ".git":
            return self.workdir
        return common.parent.resolve()

    def worktrees(self) -> dict[str, tuple[Path, Path]]:
        """Branch -> (folder, git directory) of every linked worktree with a branch checked
        out (whose folder still exists)."""
        out: dict[str, tuple[Path, Path]] = {}
        base = self.common_dir / "worktrees"
        try:
            entries = sorted(base.iterdir())
        except OSError:
            return out
        for entry in entries:
            try:
                head = (entry / "HEAD").read_text(encoding="utf-8").strip()
                folder = Path((entry / "gitdir").read_text(encoding="utf-8").strip()).parent
            except OSError:
                continue
            if head.startswith("ref: refs/heads/") and folder.exists():
                out[head.removeprefix("ref: refs/heads/")] = (folder.resolve(), entry)
        return out

    def _p(self, path: str) -> str:
        """A project-relative path as the repository names it."""
        path = path.replace(os.sep, "/").lstrip("/")
        if path.startswith("./"):
            path = path[2:]
        return f"{self.prefix}/{path}" if self.prefix and path else (self.prefix or path)

    def _rel(self, repo_path: str) -> str:
        """A repository path as the project names it (`../x` outside the project)."""
        if not self.prefix:
            return repo_path
        if repo_path.startswith(self.prefix + "/"):
            return repo_path[len(self.prefix) + 1 :]
        return Path(os.path.relpath(self.workdir / repo_path, self.root)).as_posix()

    def head_branch(self) -> str | None:
        """The checked-out branch (`mlfork/base`), or None when detached or unborn."""
        if self._repo.head_is_detached or self._repo.head_is_unborn:
            return None
        return self._repo.head.shorthand

    def head_commit(self) -> str | None:
        if self._repo.head_is_unborn:
            return None
        return str(self._repo.head.target)

    def head_state(self) -> HeadState:
        if self._repo.head_is_unborn:
            target = self._repo.references["HEAD"].target
            return HeadState(str(target).removeprefix("refs/heads/"), None)
        return HeadState(self.head_branch(), self.head_commit())

    def resolve_branch(self, branch: str) -> str | None:
        ref = self._repo.references.get("refs/heads/" + branch)
        return str(ref.target) if ref is not None else None

    def branches(self, prefix: str = "") -> list[str]:
        """Local branch names that start with `prefix`, sorted."""
        return sorted(b for b in self._repo.branches.local if b.startswith(prefix))

    def remote_branches(self, prefix: str = "") -> list[RemoteBranch]:
        """Remote-tracking branches (`<remote>/<prefix>...`) whose branch name starts with
        `prefix`, sorted by remote then name; `name` is the branch name after `prefix`."""
        out = []
        for remote in sorted(str(n) for n in self._repo.remotes.names() if n):
            start = f"refs/remotes/{remote}/{prefix}"
            for ref in self._repo.references:
                if ref.startswith(start) and not ref.endswith("/HEAD"):
                    target = self._repo.references[ref].resolve().target
                    out.append(RemoteBranch(remote, ref[len(start):], ref, str(target)))
        return sorted(out, key=lambda b: (b.remote, b.name))

    def remote_url(self, remote: str) -> str | None:
        try:
            return str(self._repo.remotes[remote].url or "") or None
        except (KeyError, ValueError):
            return None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Is `ancestor` reachable from `descendant` (or the same commit)?"""
        if ancestor == descendant:
            return True
        return bool(self._repo.descendant_of(descendant, ancestor))

    def commit(self, rev: str) -> Commit:
        obj = self._repo.get(rev)
        if obj is None or not isinstance(obj, pygit2.Commit):
            raise GitError(f"commit {rev} not found in the repository")
        return self._to_commit(obj)

    def _to_commit(self, c: pygit2.Commit) -> Commit:
        key = str(c.id)
        found = self._commits.get(key)
        if found is None:
            found = self._commits[key] = Commit(
                id=key,
                message=c.message,
                time=c.commit_time,
                parents=tuple(str(p) for p in c.parent_ids),
                trailers=naming.parse_trailers(c.message),
                author=c.author.name,
            )
        return found

    def first_parent_walk(self, start: str) -> Iterator[Commit]:
        """Commits from `start` back along first parents, newest first. Each step reads one
        commit: the walk costs what it yields, not the whole history; a commit read once
        (the shared history of a run's forks) is not parsed again."""
        key: str | None = start
        while key is not None:
            commit = self._commits.get(key)
            if commit is None:
                obj = self._repo.get(key)
                if not isinstance(obj, pygit2.Commit):
                    return
                commit = self._to_commit(obj)
            yield commit
            key = commit.parents[0] if commit.parents else None

    def _object_at(self, rev: str, path: str) -> pygit2.Object | None:
        """The blob or tree at project-relative `path` in commit `rev`, or None."""
        commit = self._repo.get(rev)
        if commit is None:
            return None
        tree = commit.peel(pygit2.Tree)
        repo_path = self._p(path)
        if not repo_path:
            return tree
        try:
            entry = tree[repo_path]
        except KeyError:
            return None
        return self._repo.get(entry.id)

    def read(self, rev: str, path: str) -> bytes | None:
        """A file's bytes at a commit, or None if the commit has no such file."""
        blob = self._object_at(rev, path)
        return blob.data if isinstance(blob, pygit2.Blob) else None

    def blob(self, oid: str) -> bytes:
        """A blob's bytes by its id (as `find_files` gives it)."""
        found = self._repo.get(oid)
        return found.data if isinstance(found, pygit2.Blob) else b""

    def blob_id(self, rev: str, path: str) -> str | None:
        """The id of the blob at `path` in `rev` (None if there is no such file)."""
        blob = self._object_at(rev, path)
        return str(blob.id) if isinstance(blob, pygit2.Blob) else None

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

    def status(self) -> Status:
        """Changed, staged and untracked paths of the whole working tree (git-ignored ones
        excluded), project-relative."""
        out = Status()
        try:
            found = self._repo.status(untracked_files="all")
        except pygit2.GitError as exc:
            raise GitError(f"git status failed: {exc}") from exc
        for path, flags in found.items():
            if flags & _CHANGED:
                out.changed.add(self._rel(path))
            elif flags & _FS.WT_NEW:
                out.untracked.add(self._rel(path))
        return out

    def dirty_paths(self) -> list[str]:
        """Changed, staged and untracked paths (git-ignored ones excluded), sorted."""
        return self.status().paths

    def require_clean(self) -> None:
        dirty = self.dirty_paths()
        if dirty:
            raise DirtyWorkingTree(dirty)

    def is_ignored(self, path: str) -> bool:
        return bool(self._repo.path_is_ignored(self._p(path)))

    def is_tracked(self, rev: str, path: str) -> bool:
        return isinstance(self._object_at(rev, path), pygit2.Blob)

    def tracked_under(self, rev: str, path: str) -> list[str]:
        """Files git tracks at `rev` under `path` (the file itself, or a folder's files)."""
        obj = self._object_at(rev, path)
        if isinstance(obj, pygit2.Blob):
            return [path]
        if not isinstance(obj, pygit2.Tree):
            return []
        out: list[str] = []

        def walk(tree: pygit2.Tree, prefix: str) -> None:
            for entry in tree:
                sub = self._repo.get(entry.id)
                name = f"{prefix}/{entry.name}"
                if isinstance(sub, pygit2.Tree):
                    walk(sub, name)
                else:
                    out.append(name)

        walk(obj, path.rstrip("/"))
        return sorted(out)

    def find_suffix(self, rev: str, suffix: str) -> list[tuple[str, str]]:
        """`find_files` for every file whose name ends with `suffix` (`.dvc`)."""
        return self.find_files(rev, "*" + suffix)

    def find_files(self, rev: str, name: str) -> list[tuple[str, str]]:
        """(project-relative path, blob id) of every file called `name` (`*suffix`: whose
        name ends with it) in the project at `rev`, sorted by path. Folders are memoized by
        their tree id, so a walk of the next commit only descends into what changed."""
        root = self._object_at(rev, "")
        if not isinstance(root, pygit2.Tree):
            return []
        return self._find_in(root, name)

    def _find_in(self, tree: pygit2.Tree, name: str) -> list[tuple[str, str]]:
        key = (str(tree.id), name)
        if key in self._found:
            return self._found[key]
        out: list[tuple[str, str]] = []
        for entry in tree:
            if entry.type == pygit2.enums.ObjectType.TREE:
                if entry.name in (".git", ".dvc"):
                    continue
                sub = self._repo.get(entry.id)
                if isinstance(sub, pygit2.Tree):
                    out += [(f"{entry.name}/{p}", b) for p, b in self._find_in(sub, name)]
            elif entry.name == name or (name.startswith("*")
                                        and str(entry.name).endswith(name[1:])):
                out.append((str(entry.name), str(entry.id)))
        out.sort()
        self._found[key] = out
        return out
