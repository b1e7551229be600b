"""The project an operation works on: git, DVC, the policy, local state and the lock.

The project's root is its DVC root, which may be a subfolder of the git repository
(`dvc init --subdir`, a folder of a monorepo); every path mlfork records is relative to it.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlfork import naming
from mlfork.adapters.git import GitRepo
from mlfork.errors import MalformedFile, NotADvcProject, OverrideError
from mlfork.models import Pipeline, Policy, RunRecord
from mlfork.nested import dump_yaml, load_yaml
from mlfork.ops.kernel import lock as locks
from mlfork.ops.kernel.lock import ProjectLock

if TYPE_CHECKING:
    from mlfork.adapters.dvc import DvcProject


def find_dvc_root(start: Path, top: Path) -> Path | None:
    """The nearest folder from `start` up to `top` (the git work tree) that holds `.dvc/`."""
    probe = start.resolve()
    top = top.resolve()
    while True:
        if (probe / ".dvc").is_dir():
            return probe
        if probe == top or probe.parent == probe:
            return None
        probe = probe.parent


@dataclass
class Composed:
    """The config of one iteration: the main config (what params.yaml holds) and the bytes
    of every params file mlfork writes (params.yaml, and each file an override names)."""

    config: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # parsed, by file
    warnings: list[str] = field(default_factory=list)  # keys that call a resolver


class Project:
    def __init__(self, git: GitRepo) -> None:
        self.git = git
        self.root = git.root
        # where the project's shared machine-local state lives (tracking store, outbox,
        # run states, logs): the main worktree's project folder, also from a linked one
        main = git.main_workdir
        self.home = main / git.prefix if main != git.workdir else self.root
        self._records: dict[str, RunRecord | None] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", require_dvc: bool = True) -> Project:
        repo = GitRepo.open(path)
        start = Path(path)
        if not start.exists():
            start = repo.workdir
        found = find_dvc_root(start if start.is_dir() else start.parent, repo.workdir)
        if found is None:
            if require_dvc:
                raise NotADvcProject(str(Path(path).resolve()))
            found = repo.workdir
        return cls(repo.at(found))

    # -- DVC ------------------------------------------------------------------------------------

    @cached_property
    def dvc(self) -> DvcProject:
        from mlfork.adapters.dvc import DvcProject

        return DvcProject(self.root)

    def pipeline(self) -> Pipeline:
        return self.dvc.pipeline()

    @cached_property
    def metrics(self) -> Any:
        """One metrics reader per command (it memoizes what DVC finds per commit)."""
        from mlfork.ops.kernel.metrics_reader import MetricsReader

        return MetricsReader(self)

    @cached_property
    def steps(self) -> Any:
        """One per-step series reader per command (see ops.kernel.steps)."""
        from mlfork.ops.kernel.steps import StepReader

        return StepReader(self)

    def close(self) -> None:
        if "dvc" in self.__dict__:
            self.dvc.close()
            del self.__dict__["dvc"]

    # -- config ---------------------------------------------------------------------------------

    def has_conf(self, rev: str) -> bool:
        return self.git.has_path(rev, f"{naming.CONF_DIR}/{naming.CONF_NAME}.yaml")

    def _read_yaml(self, rev: str, path: str) -> dict[str, Any] | None:
        data = self.git.read(rev, path)
        if data is None:
            return None
        try:
            loaded = load_yaml(data) or {}
        except yaml.YAMLError as exc:
            raise MalformedFile(path, str(exc).splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise MalformedFile(path, "expected a mapping at the top")
        return loaded

    def raw_root_config(self, rev: str) -> dict[str, Any]:
        """conf/config.yaml (or params.yaml in params-only mode) at `rev`, parsed, not composed."""
        conf = f"{naming.CONF_DIR}/{naming.CONF_NAME}.yaml"
        path = conf if self.has_conf(rev) else naming.PARAMS_FILE
        return self._read_yaml(rev, path) or {}

    def outputs_at(self, rev: str) -> dict[str, dict[str, Any]]:
        """Every stage output DVC locked at commit `rev`: project-relative path -> its entry
        (md5, size, ...), from every dvc.lock of the project (one beside each dvc.yaml, a
        pipeline's stages may live in any folder). Entries of one text are shared: do not
        mutate them."""
        from mlfork.adapters.dvc_files import project_entries

        return project_entries((lock, self.git.read(rev, lock))
                               for lock, _ in self.git.find_files(rev, "dvc.lock"))

    def lock_of(self, rev: str, path: str) -> str | None:
        """The dvc.lock (project-relative) that records output `path` at `rev`."""
        from mlfork.adapters.dvc_files import lock_outputs

        for lock, _ in self.git.find_files(rev, "dvc.lock"):
            folder = lock.rsplit("/", 1)[0] + "/" if "/" in lock else ""
            if path.startswith(folder) and path[len(folder):] in lock_outputs(
                    self.git.read(rev, lock)):
                return lock
        return None

    def params_at(self, rev: str) -> dict[str, Any]:
        """The composed config of a commit (its params.yaml); {} if missing or unreadable."""
        raw = self.git.read(rev, naming.PARAMS_FILE)
        try:
            loaded = load_yaml(raw) if raw else {}
        except yaml.YAMLError:
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def params_file_at(self, rev: str, path: str) -> dict[str, Any]:
        """A params file (any format DVC reads) at `rev`, parsed ({} if absent)."""
        raw = self.git.read(rev, path)
        return _parse_params(path, raw) if raw is not None else {}

    def locked_value_at(self, rev: str, key: str) -> Any:
        """The value at commit `rev` of a locked key: `dataset.name` (params.yaml), or a key
        of another params file in DVC's grammar (`data.yaml:source`); MISSING if absent."""
        file, dotted = naming.split_params_file(key)
        data = self.params_at(rev) if file is None else self.params_file_at(rev, file)
        return dotted_get(data, dotted, MISSING)

    def params_at_workspace(self) -> dict[str, Any]:
        """params.yaml as it is in the workspace ({} if missing or unreadable)."""
        try:
            loaded = load_yaml((self.root / naming.PARAMS_FILE).read_bytes())
        except (OSError, yaml.YAMLError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def config_groups(self, rev: str) -> list[str]:
        """The Hydra config groups (folders of conf/) at `rev`."""
        return self.git.subdirs(rev, naming.CONF_DIR)

    def policy(self, rev: str) -> Policy:
        """The fork policy: the `mlfork:` section of conf/config.yaml (in a project without
        conf/, of params.yaml), with the keys of `.mlfork/config.yaml` over it (where
        `mlfork init` commits the team's experiment when it adopts a project)."""
        if self.has_conf(rev):
            source = f"{naming.CONF_DIR}/{naming.CONF_NAME}.yaml"
            section = self.raw_root_config(rev).get("mlfork")
        else:
            source = naming.PARAMS_FILE
            section = (self._read_yaml(rev, naming.PARAMS_FILE) or {}).get("mlfork")
        own = self._read_yaml(rev, naming.POLICY_FILE)
        if own is not None:
            own = own.get("mlfork", own)
            if not isinstance(own, dict):
                raise MalformedFile(naming.POLICY_FILE, "the 'mlfork' section must be a mapping")
            if own:
                base = section if isinstance(section, dict) else {}
                return Policy.from_config({**base, **own}, naming.POLICY_FILE)
        return Policy.from_config(section, source)

    def compose(
        self, rev: str, overrides: list[str], iteration: int | None, budget: int | None
    ) -> Composed:
        """The config of one iteration at commit `rev`:
        - with conf/: conf/ at `rev` composed by Hydra with the main-config overrides;
        - without: params.yaml at `rev` with the main-config overrides applied;
        - each params file an override names (`train.yaml:lr=0.1`): that file at `rev` with
          its overrides applied, as `dvc exp run -S` does.
        Overrides are applied idempotently: `rev` may hold a file they were applied to
        already. `iteration`/`iterations` are set when the main config has those keys
        (`budget` None keeps the config's). The `mlfork` policy section is not part of
        params.yaml.

        The answer depends on git content alone: it is kept across commands (`memo`)."""
        from mlfork.ops.kernel import memo

        parts = [rev, list(overrides), iteration, budget]
        kept = memo.get(self, "compose", parts)
        if isinstance(kept, dict):
            try:
                return self._composed_from(kept)
            except (ValueError, TypeError, KeyError, yaml.YAMLError):
                pass
        out = self._compose(rev, overrides, iteration, budget)
        if out.warnings:  # a resolver reads this machine at each composition: not kept
            return out
        memo.put(self, "compose", parts, {
            "files": {rel: base64.b64encode(text).decode("ascii")
                      for rel, text in out.files.items()},
            "warnings": out.warnings,
        })
        return out

    def _composed_from(self, kept: dict[str, Any]) -> Composed:
        files = {str(rel): base64.b64decode(text) for rel, text in kept["files"].items()}
        config = load_yaml(files[naming.PARAMS_FILE]) or {} \
            if naming.PARAMS_FILE in files else {}
        out = Composed(config=config, files=files, warnings=[str(w) for w in kept["warnings"]])
        out.data[naming.PARAMS_FILE] = config
        for rel, text in files.items():
            if rel != naming.PARAMS_FILE:
                out.data[rel] = _parse_params(rel, text)
        return out

    def _compose(
        self, rev: str, overrides: list[str], iteration: int | None, budget: int | None
    ) -> Composed:
        from mlfork.adapters import hydra
        from mlfork.adapters.dvc_files import apply_params_overrides

        parsed = hydra.parse_overrides(list(overrides))
        by_file: dict[str | None, list[tuple[str, str]]] = {}
        for ov in parsed:
            body = naming.split_params_file(ov.text)[1]
            by_file.setdefault(ov.file, []).append((ov.text, body))
        main = [body for _, body in by_file.pop(None, [])]
        out = Composed(config={})
        if self.has_conf(rev):
            with tempfile.TemporaryDirectory(prefix="mlfork-conf-") as tmp:
                self.git.export_dir(rev, naming.CONF_DIR, Path(tmp))
                config = hydra.compose(Path(tmp), main, naming.CONF_NAME)
                for path in sorted(Path(tmp).rglob("*.yaml")):
                    rel = f"{naming.CONF_DIR}/{path.relative_to(tmp).as_posix()}"
                    for key, resolver in hydra.resolver_uses(path.read_bytes()):
                        out.warnings.append(
                            f"{rel}: '{key}' calls the resolver '{resolver}': its value is"
                            " read on this machine and committed in params.yaml and MLflow"
                        )
            config.pop("mlfork", None)
            if "iteration" in config and iteration is not None:
                config["iteration"] = iteration
            if "iterations" in config and budget is not None:
                config["iterations"] = budget
            out.files[naming.PARAMS_FILE] = dump_yaml(config).encode("utf-8")
        else:
            raw = self.git.read(rev, naming.PARAMS_FILE)
            if raw is None:
                if main:
                    raise OverrideError(
                        " ".join(main),
                        "the project has neither conf/config.yaml nor params.yaml to apply it"
                        " to: address a params file ('train.yaml:lr=0.1')",
                    )
                config = {}
            else:
                current = self._read_yaml(rev, naming.PARAMS_FILE) or {}
                managed = [(t, t) for t in main]
                if "iteration" in current and iteration is not None:
                    managed.append(("iteration", f"iteration={iteration}"))
                if "iterations" in current and budget is not None:
                    managed.append(("iterations", f"iterations={budget}"))
                text = apply_params_overrides(raw, naming.PARAMS_FILE, managed) \
                    if managed else raw
                out.files[naming.PARAMS_FILE] = text
                config = load_yaml(text) or {}
        out.config = config
        out.data[naming.PARAMS_FILE] = config
        for file, items in sorted(by_file.items(), key=lambda kv: str(kv[0])):
            if file is None:
                continue
            raw = self.git.read(rev, file)
            if raw is None:
                raise OverrideError(
                    items[0][0], f"params file '{file}' does not exist at {rev[:10]}"
                )
            text = apply_params_overrides(raw, file, items)
            out.files[file] = text
            out.data[file] = _parse_params(file, text)
        return out

    # -- run records ----------------------------------------------------------------------------

    def read_record(self, rev: str) -> RunRecord | None:
        """The run record committed at `rev` (memoized by commit: it never changes); a
        copy the caller may change."""
        rec = self._record(rev)
        return None if rec is None else RunRecord.from_dict(rec.to_dict())

    def starts_lineage(self, rev: str) -> bool:
        """Does the history of a run begin at `rev`: a commit with no run record, or with
        the record of a run that is no fork? (Where a walk back along a run stops.)"""
        rec = self._record(rev)
        return rec is None or rec.parent is None

    def _record(self, rev: str) -> RunRecord | None:
        if rev in self._records:
            return self._records[rev]
        data = self.git.read(rev, naming.RUN_RECORD)
        if data is None:
            self._records[rev] = None
            return None
        try:
            loaded = load_yaml(data)
        except yaml.YAMLError as exc:
            raise MalformedFile(naming.RUN_RECORD, str(exc).splitlines()[0]) from exc
        rec = self._records[rev] = RunRecord.from_dict(loaded)
        return rec

    def write_record(self, record: RunRecord) -> None:
        path = self.root / naming.RUN_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record_text(record), encoding="utf-8")

    # -- local state ----------------------------------------------------------------------------

    def local(self, *parts: str) -> Path:
        """A path under the project's .mlfork/local/, which ignores itself: no project setup
        needed. From a linked worktree, the main worktree's: every worktree of a clone
        shares one tracking store, outbox, run states and logs."""
        return self._local(self.home, parts)

    def local_here(self, *parts: str) -> Path:
        """A path under this worktree's own .mlfork/local/ (what backs up its workspace)."""
        return self._local(self.root, parts)

    @staticmethod
    def _local(root: Path, parts: tuple[str, ...]) -> Path:
        base = root / naming.LOCAL_DIR
        if not (base / ".gitignore").exists():
            base.mkdir(parents=True, exist_ok=True)
            (base / ".gitignore").write_text("# mlfork's machine-local state\n*\n")
        path = base.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_state(self, run: str, status: str, reason: str = "") -> None:
        path = self.local("state", f"{run}.json")
        payload = {"status": status, "reason": reason, "updated": time.time()}
        path.write_text(json.dumps(payload, sort_keys=True), encoding="utf-8")

    def read_state(self, run: str) -> dict[str, Any]:
        path = self.home / naming.STATE_DIR / f"{run}.json"
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def strays(self) -> set[str]:
        """Untracked files the pipeline's stages wrote outside what DVC declares (named in a
        warning when they appeared): they are the pipeline's, and never block a command."""
        try:
            return set(json.loads((self.root / naming.STRAYS_FILE).read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            return set()

    def add_strays(self, paths: set[str]) -> None:
        if paths:
            known = self.strays() | paths
            self.local_here("strays.json").write_text(json.dumps(sorted(known)), encoding="utf-8")

    @property
    def lock_path(self) -> Path:
        """The project lock: in the worktree's git directory, so that taking it changes
        nothing in the working tree (a refused command leaves it byte for byte)."""
        return self.git.git_dir / naming.lock_name(self.git.prefix)

    def last_work(self) -> dict[str, Any] | None:
        """What the last holder of the lock was in the middle of (a stage, a switch) if it
        died there; None if it finished cleanly. Under the lock, what the lock found."""
        return locks.last_work(self)

    def running(self) -> set[str]:
        """The runs being run right now, here or in another worktree."""
        if "_running" not in self.__dict__:
            self.__dict__["_running"] = locks.running(self)
        return set(self.__dict__["_running"])

    def lock(self, run: str, command: str) -> AbstractContextManager[ProjectLock]:
        """One mlfork writer per project, from a command's first check to its last write
        (re-entrant within a process)."""
        return locks.acquire(self, run, command)


def _parse_params(path: str, text: bytes) -> dict[str, Any]:
    from dvc.utils.serialize import PARSERS

    try:
        loaded = PARSERS[os.path.splitext(path)[1].lower()](text.decode("utf-8"), path)
    except Exception:  # noqa: BLE001 - a file DVC cannot parse has no known keys
        return {}
    return dict(loaded) if isinstance(loaded, dict) else {}


MISSING = object()


def dotted_get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """`config["a"]["b"]` for "a.b", or `default` where the path does not exist."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def record_text(record: RunRecord) -> str:
    return "# mlfork run record: written by mlfork, do not edit\n" + yaml.safe_dump(
        record.to_dict(), sort_keys=True, default_flow_style=False
    )
