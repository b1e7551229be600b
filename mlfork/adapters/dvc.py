"""The DVC adapter: the only modules that import dvc are this one, `dvc_files` (DVC's files
read from their bytes) and `stages` (which supervises the stage processes DVC runs).

Everything mlfork knows about a pipeline comes from DVC's own index (`Pipeline`: stages in
run order with their deps, params and outs, `foreach`/`matrix` items, `vars` and templating
resolved by DVC), and metrics are collected the way `dvc metrics show` collects them. The
workspace is only ever touched for the outputs asked for: mlfork never forces a checkout of
every output, so a clone whose cache is empty works wherever `dvc repro` works.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mlfork.adapters.dvc_files import first_line, in_dir, lock_outputs, quiet_dvc
from mlfork.errors import MissingData, NotADvcProject, ProjectError
from mlfork.models import Out, Pipeline, Stage

LOCK_FILE = "dvc.lock"
PROJECT_FILE = "dvc.yaml"
LINK_TYPES = "reflink,hardlink,symlink"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


class DvcProject:
    def __init__(self, root: Path) -> None:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo

        self.root = Path(root)
        if not (self.root / ".dvc").is_dir():
            raise NotADvcProject(str(self.root))
        try:
            self.repo = Repo(str(self.root))
        except NotDvcRepoError as exc:
            raise NotADvcProject(str(self.root)) from exc
        self._pipeline: Pipeline | None = None
        self._at: dict[str, Any] = {}

    def close(self) -> None:
        for repo in self._at.values():
            repo.close()
        self._at.clear()
        self.repo.close()

    def __enter__(self) -> DvcProject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup ----------------------------------------------------------------------------------

    @staticmethod
    def init(root: Path, subdir: bool = False) -> None:
        """`dvc init` in a git repository, with cache links instead of copies."""
        from dvc.repo import Repo

        with quiet_dvc():
            repo = Repo.init(str(root), subdir=subdir)
        try:
            DvcProject.configure_links(repo)
        finally:
            repo.close()

    @staticmethod
    def configure_links(repo: Any, level: str = "repo") -> bool:
        """Set `cache.type` to links; False if the project already chose its own."""
        if repo.config.get("cache", {}).get("type"):
            return False
        with repo.config.edit(level) as conf:
            conf.setdefault("cache", {})["type"] = LINK_TYPES
        return True

    # -- the pipeline -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget what DVC cached about dvc.yaml, dvc.lock and params: they changed on disk."""
        self.repo._reset()
        self._pipeline = None

    def pipeline(self) -> Pipeline:
        """The workspace's pipeline, from DVC's index (memoized until `reset`)."""
        if self._pipeline is None:
            self._pipeline = self._describe(self.repo)
        return self._pipeline

    def _describe(self, repo: Any) -> Pipeline:
        from dvc.dependency.param import ParamsDependency
        from dvc.exceptions import DvcException
        from dvc.stage import PipelineStage

        root = repo.root_dir

        def rel(path: str) -> str:
            return Path(os.path.relpath(path, root)).as_posix()

        try:
            with quiet_dvc():
                index = repo.index
                all_stages = list(index.stages)
                graph = index.graph
                top_metrics = [
                    rel(os.path.join(os.path.dirname(f), m))
                    for f, items in index._metrics.items() for m in items
                ]
                top_plots = []
                for f, items in index._plots.items():
                    for item in items:
                        name = next(iter(item)) if isinstance(item, dict) else str(item)
                        top_plots.append(rel(os.path.join(os.path.dirname(f), name)))
        except DvcException as exc:
            raise ProjectError(f"DVC cannot read the pipeline: {first_line(exc)}") from exc
        pipeline_stages = [s for s in all_stages if isinstance(s, PipelineStage)]
        order = {s: i for i, s in enumerate(pipeline_stages)}
        done: list[Any] = []
        seen: set[Any] = set()

        def visit(stage: Any) -> None:
            if stage in seen:
                return
            seen.add(stage)
            for dep in sorted((d for d in graph.successors(stage) if d in order),
                              key=order.__getitem__):
                visit(dep)
            done.append(stage)

        for stage in pipeline_stages:
            visit(stage)

        def outs_of(stage: Any, name: str) -> tuple[Out, ...]:
            return tuple(
                Out(
                    path=rel(o.fs_path), stage=name, cache=bool(o.use_cache),
                    metric=bool(o.metric), plot=bool(o.plot), persist=bool(o.persist),
                    md5=str(o.hash_info.value) if o.hash_info and o.hash_info.value else None,
                    size=o.meta.size if o.meta and o.meta.size is not None else None,
                    nfiles=o.meta.nfiles if o.meta and o.meta.nfiles is not None else None,
                )
                for o in stage.outs
                if o.is_in_repo
            )

        def address(s: Any) -> str:  # DVC's addressing, from the root rather than the cwd
            dvcfile = rel(s.path)
            return s.name if dvcfile == PROJECT_FILE else f"{dvcfile}:{s.name}"

        stages = []
        for s in done:
            params: list[tuple[str, tuple[str, ...]]] = []
            deps: list[str] = []
            for d in s.deps:
                if isinstance(d, ParamsDependency):
                    params.append((rel(d.fs_path), tuple(str(k) for k in d.params or ())))
                elif d.is_in_repo:
                    deps.append(rel(d.fs_path))
            stages.append(Stage(
                name=address(s), dvcfile=rel(s.path), deps=tuple(deps),
                params=tuple(params), outs=outs_of(s, address(s)), frozen=bool(s.frozen),
            ))
        sources = [
            o for s in all_stages if not isinstance(s, PipelineStage)
            for o in outs_of(s, rel(s.path))
        ]
        dvcfiles = sorted({rel(s.path) for s in all_stages} | {
            rel(f) for f in (*index._metrics, *index._plots)
        })
        lockfiles = sorted({
            rel(os.path.join(os.path.dirname(s.path), LOCK_FILE)) for s in pipeline_stages
        })
        return Pipeline(
            stages=tuple(stages), sources=tuple(sources), dvcfiles=tuple(dvcfiles),
            lockfiles=tuple(lockfiles), top_metrics=tuple(top_metrics),
            top_plots=tuple(top_plots),
        )

    def pipeline_at(self, rev: str) -> Pipeline:
        """The pipeline as commit `rev` declares it (read from git's objects)."""
        return self._describe(self.at(rev))

    def ignore_outputs(self, paths: Iterable[str]) -> list[str]:
        """Add cached outputs to the .gitignore files beside them, as DVC does when it
        writes them (so that git ignores them on every branch); the .gitignore files
        changed, project-relative."""
        changed = []
        for rel in paths:
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            gitignore = self.repo.scm.ignore(str(self.root / rel))
            if gitignore:
                changed.append(Path(os.path.relpath(gitignore, self.root)).as_posix())
        return sorted(set(changed))

    def stage_names(self) -> list[str]:
        """Pipeline stages in run order: dependencies first, ties in dvc.yaml order."""
        self.reset()
        return self.pipeline().stage_names

    # -- the cache, the remote and the workspace ------------------------------------------------

    def _outs(self, paths: Iterable[str]) -> list[Any]:
        wanted = {os.path.normpath(self.root / p) for p in paths}
        return [o for o in self.repo.index.outs if os.path.normpath(o.fs_path) in wanted]

    def missing_from_cache(self, paths: Iterable[str]) -> list[str]:
        """Those of `paths` (outputs the workspace's DVC files record) whose objects the
        local cache lacks."""
        with quiet_dvc():
            return sorted(
                Path(os.path.relpath(o.fs_path, self.root)).as_posix()
                for o in self._outs(paths) if o.use_cache and o.changed_cache()
            )

    def has_object(self, entry: dict[str, Any]) -> bool:
        """Is the output a dvc.lock / .dvc entry ({md5, ...}) records all in the cache
        (a folder: its listing and every file in it)?"""
        import json

        md5 = str(entry.get("md5") or "")
        if not md5:
            return False
        path = self.cache_path(md5)
        if not md5.endswith(".dir"):
            return path.exists()
        try:
            listing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return all(self.cache_path(str(e.get("md5"))).exists() for e in listing)

    @property
    def cache_dir(self) -> str:
        """The local cache's folder, as `cache.dir` names it (absolute)."""
        return str(self.repo.cache.local_cache_dir)

    def default_remote(self) -> str | None:
        remote = self.repo.config.get("core", {}).get("remote")
        return str(remote) if remote else None

    def fetch(self, paths: list[str], why: str) -> int:
        """Fetch the objects of these outputs from the default DVC remote (exactly those);
        the number of objects transferred. MissingData when there is no remote or it fails."""
        from dvc.config import NoRemoteError
        from dvc.exceptions import DvcException

        remote = self.default_remote()
        shown = ", ".join(paths)
        pull = "dvc pull " + " ".join(paths)
        if remote is None:
            raise MissingData(
                f"{why}: {shown} is in neither the workspace nor the DVC cache, and no DVC"
                f" remote is configured: add the project's remote ('dvc remote add -d NAME URL')"
                f" or copy the data here, then run '{pull}'"
            )
        import logging

        try:
            with quiet_dvc(logging.ERROR), in_dir(self.root):
                count = int(self.repo.fetch(targets=list(paths), remote=remote) or 0)
        except (NoRemoteError, DvcException) as exc:
            raise MissingData(
                f"{why}: {shown} is in neither the workspace nor the DVC cache, and fetching it"
                f" from DVC remote '{remote}' failed ({first_line(exc)}): check the remote,"
                f" then run '{pull}'"
            ) from exc
        still = self.missing_from_cache(paths)
        if still:
            raise MissingData(
                f"{why}: {', '.join(still)} is in neither the workspace, the DVC cache nor DVC"
                f" remote '{remote}': push it there from a machine that has it ('dvc push'),"
                f" then run '{'dvc pull ' + ' '.join(still)}'"
            )
        return count

    def checkout(self, paths: Iterable[str]) -> list[str]:
        """Link these outputs from the cache as the workspace's DVC files record them. Only
        outputs whose objects are all in the cache are touched (a checkout of a missing
        object would delete the workspace's file); the others are returned."""
        from dvc.exceptions import CheckoutError

        self.reset()
        outs = self._outs(paths)
        with quiet_dvc():
            ready = [o for o in outs if o.use_cache and o.hash_info and not o.changed_cache()]
        missing = sorted(
            Path(os.path.relpath(o.fs_path, self.root)).as_posix()
            for o in outs if o.use_cache and o not in ready
        )
        if ready:
            try:
                with quiet_dvc(), in_dir(self.root):
                    self.repo.checkout(targets=[o.fs_path for o in ready], force=True)
            except CheckoutError as exc:
                raise ProjectError(f"DVC could not link outputs from its cache ({exc})") from exc
        return missing

    def set_resume(self, resume: str, source: dict[str, Any] | None) -> Path | None:
        """Point the hand-off input `resume` at a cached output (`source` is its dvc.lock
        entry: md5, size, and for a folder nfiles) or, with None, at an empty file meaning
        "start fresh". A `.dvc` file records it; the data is linked, never copied. Returns
        the cache object it had to add (the empty file's), if any."""
        path = self.root / resume
        dvcfile = self.root / (resume + ".dvc")
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any]
        if source is None:
            entry = {"md5": EMPTY_MD5, "size": 0, "hash": "md5"}
        else:
            entry = {k: source[k] for k in ("md5", "size", "nfiles", "hash") if k in source}
        entry["path"] = path.name
        dvcfile.write_text(yaml.safe_dump({"outs": [entry]}, sort_keys=False), encoding="utf-8")
        self.reset()
        if source is None:
            path.write_bytes(b"")
            return self._add_to_cache(path, EMPTY_MD5)
        missing = self.checkout([resume])
        if missing:
            raise MissingData(
                f"the checkpoint {entry['md5']} for '{resume}' is not in the DVC cache:"
                f" run 'dvc pull {resume}.dvc' first"
            )
        return None

    def _add_to_cache(self, path: Path, md5: str) -> Path | None:
        """Put a small file into the cache under `md5` (what `dvc add` would store) and
        ignore it in git as `dvc add` does, without DVC re-hashing anything. Returns the
        object's path if it was not in the cache before."""
        added = self.put_object(path.read_bytes(), md5)
        ignore = path.parent / ".gitignore"
        line = f"/{path.name}"
        text = ignore.read_text(encoding="utf-8") if ignore.exists() else ""
        if line not in text.splitlines():
            sep = "" if not text or text.endswith("\n") else "\n"
            ignore.write_text(text + sep + line + "\n", encoding="utf-8")
        return added

    def put_object(self, data: bytes, md5: str) -> Path | None:
        """Put `data` into the cache as the object `md5` (read-only, as DVC keeps them).
        Returns the object's path if it was not in the cache before."""
        target = self.cache_path(md5)
        if target.exists():
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".mlfork-tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
        return target

    def cache_path(self, md5: str) -> Path:
        return Path(self.repo.cache.local.oid_to_path(md5))

    def lock_entry(self, lock_text: bytes | None, path: str) -> dict[str, Any] | None:
        """The entry of output `path` in a dvc.lock text (md5, size, ...), or None."""
        return lock_outputs(lock_text).get(path)

    def status(self) -> dict[str, Any]:
        self.reset()
        with quiet_dvc():
            return dict(self.repo.status())

    # -- metrics, the way `dvc metrics show` finds them -------------------------------------------

    def at(self, rev: str) -> Any:
        """A DVC repository reading the commit `rev` (from git's objects, not the workspace)."""
        if rev not in self._at:
            from dvc.fs import GitFileSystem
            from dvc.repo import Repo

            if len(self._at) > 16:
                for old in self._at.values():
                    old.close()
                self._at.clear()
            scm = self.repo.scm
            # the project's folder inside the commit's tree (a project in a subfolder of
            # its repository reads its own folder, as `dvc metrics show -A` does)
            folder = Path(os.path.relpath(self.root.resolve(), Path(scm.root_dir).resolve()))
            root = "/" if str(folder) == "." else "/" + folder.as_posix()
            # the commit's .dvc/config is read with this clone's config.local on top: a
            # remote section the commit lacks (added later) but config.local completes (an
            # S3 endpoint, keys) would not validate; the workspace's remotes complete it
            remotes = {name: dict(conf) for name, conf in
                       (self.repo.config.get("remote") or {}).items()}
            self._at[rev] = Repo(root_dir=root, fs=GitFileSystem(scm=scm, rev=rev), scm=scm,
                                 config={"remote": remotes} if remotes else None)
        return self._at[rev]

    def metric_files(self, rev: str) -> list[str]:
        """The metrics files DVC finds at commit `rev`: stage `metrics:` outputs and the
        top-level `metrics:` section (a folder expanded to its files), project-relative."""
        from dvc.exceptions import DvcException
        from dvc.repo.metrics.show import _collect_metrics

        try:
            with quiet_dvc(50):
                repo = self.at(rev)
                found = _collect_metrics(repo)
        except (DvcException, OSError) as exc:
            raise ProjectError(
                f"DVC cannot read the metrics of commit {rev[:10]}: {first_line(exc)}"
            ) from exc
        return [p.lstrip("/") for p in found]

    def plot_sources(self, rev: str) -> list[list[Any]]:
        """The per-step data DVC declares at commit `rev`: [path, x column or None] for each
        file or folder of the top-level `plots:` sections (each file a `y` of a plot names,
        for the plots that name files) and each stage output under `plots:`,
        project-relative."""
        import posixpath

        from dvc.exceptions import DvcException

        out: list[list[Any]] = []
        try:
            with quiet_dvc(50):
                repo = self.at(rev)
                root = repo.root_dir

                def rel(path: str) -> str:
                    return posixpath.normpath(posixpath.relpath(path, root))

                for dvcfile, defs in repo.index._plots.items():
                    folder = posixpath.dirname(rel(dvcfile))
                    for item in defs:
                        pid, props = (item, {}) if isinstance(item, str) else next(
                            iter(item.items()))
                        props = props or {}
                        x, y = props.get("x"), props.get("y")
                        if isinstance(y, dict):  # a plot naming its files
                            for path in y:
                                xs = x.get(path) if isinstance(x, dict) else x
                                out.append([posixpath.normpath(posixpath.join(folder, path)),
                                            xs if isinstance(xs, str) else None])
                        else:
                            out.append([posixpath.normpath(posixpath.join(folder, pid)),
                                        x if isinstance(x, str) else None])
                for plot in repo.index.plots:
                    props = plot.plot if isinstance(plot.plot, dict) else {}
                    x = props.get("x")
                    out.append([rel(plot.fs_path), x if isinstance(x, str) else None])
        except (DvcException, OSError) as exc:
            raise ProjectError(
                f"DVC cannot read the plots of commit {rev[:10]}: {first_line(exc)}"
            ) from exc
        return [[p.lstrip("/"), x] for p, x in out]

    def read_at(self, rev: str, path: str) -> bytes | None:
        """A DVC-tracked file as of `rev` (from the cache), or None if it cannot be had
        without a download."""
        repo = self.at(rev)
        try:
            with quiet_dvc(50), repo.dvcfs.open("/" + path, "rb") as fh:
                data: bytes = fh.read()
                return data
        except Exception:  # not in the cache, an unreadable tree: no value
            return None


