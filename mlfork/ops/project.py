"""The project an operation works on: git, DVC, the policy, local state and the lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .. import naming
from ..adapters.git import GitRepo
from ..errors import ConfigError, MalformedFile, NotADvcProject, ProjectLocked
from ..models import Policy, RunRecord


class Project:
    def __init__(self, git: GitRepo) -> None:
        self.git = git
        self.root = git.root

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", require_dvc: bool = True) -> Project:
        project = cls(GitRepo.open(path))
        if require_dvc and not (project.root / ".dvc").is_dir():
            raise NotADvcProject(str(project.root))
        return project

    # -- DVC ------------------------------------------------------------------------------------

    @cached_property
    def dvc(self) -> Any:
        from ..adapters.dvc import DvcProject

        return DvcProject(self.root)

    def close(self) -> None:
        if "dvc" in self.__dict__:
            self.dvc.close()
            del self.__dict__["dvc"]

    # -- config ---------------------------------------------------------------------------------

    def has_conf(self, rev: str) -> bool:
        return self.git.has_path(rev, f"{naming.CONF_DIR}/{naming.CONF_NAME}.yaml")

    def raw_root_config(self, rev: str) -> dict[str, Any]:
        """conf/config.yaml (or params.yaml in params-only mode) at `rev`, parsed, not composed."""
        conf = f"{naming.CONF_DIR}/{naming.CONF_NAME}.yaml"
        path = conf if self.has_conf(rev) else naming.PARAMS_FILE
        data = self.git.read(rev, path)
        if data is None:
            return {}
        try:
            loaded = yaml.safe_load(data) or {}
        except yaml.YAMLError as exc:
            raise MalformedFile(path, str(exc).splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise MalformedFile(path, "expected a mapping at the top")
        return loaded

    def params_at(self, rev: str) -> dict[str, Any]:
        """The composed config of a commit (its params.yaml); {} if missing or unreadable."""
        raw = self.git.read(rev, naming.PARAMS_FILE)
        try:
            loaded = yaml.safe_load(raw) if raw else {}
        except yaml.YAMLError:
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def config_groups(self, rev: str) -> list[str]:
        """The Hydra config groups (folders of conf/) at `rev`."""
        return self.git.subdirs(rev, naming.CONF_DIR)

    def policy(self, rev: str) -> Policy:
        return Policy.from_config(self.raw_root_config(rev).get("mlfork"))

    def compose(
        self, rev: str, overrides: list[str], base_commit: str, iteration: int, budget: int
    ) -> dict[str, Any]:
        """The config of one iteration: conf/ at `rev` + overrides, or, without conf/,
        params.yaml at `base_commit` + overrides. `iteration`/`iterations` are set when the
        config has those keys. The `mlfork` policy section is not part of params.yaml."""
        from ..adapters import hydra

        if self.has_conf(rev):
            with tempfile.TemporaryDirectory(prefix="mlfork-conf-") as tmp:
                self.git.export_dir(rev, naming.CONF_DIR, Path(tmp))
                config = hydra.compose(Path(tmp), overrides, naming.CONF_NAME)
            config.pop("mlfork", None)
        else:
            raw = self.git.read(base_commit, naming.PARAMS_FILE)
            if raw is None:
                raise ConfigError(
                    "the project has neither conf/config.yaml nor params.yaml: add one of them"
                )
            base = yaml.safe_load(raw) or {}
            config = hydra.apply_overrides(base, overrides)
        if "iteration" in config:
            config["iteration"] = iteration
        if "iterations" in config:
            config["iterations"] = budget
        return config

    # -- run records ----------------------------------------------------------------------------

    def read_record(self, rev: str) -> RunRecord | None:
        data = self.git.read(rev, naming.RUN_RECORD)
        if data is None:
            return None
        try:
            loaded = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise MalformedFile(naming.RUN_RECORD, str(exc).splitlines()[0]) from exc
        return RunRecord.from_dict(loaded)

    def write_record(self, record: RunRecord) -> None:
        path = self.root / naming.RUN_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record_text(record), encoding="utf-8")

    # -- local state ----------------------------------------------------------------------------

    def local(self, *parts: str) -> Path:
        """A path under .mlfork/local/, which ignores itself: no project setup needed."""
        base = self.root / naming.LOCAL_DIR
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
        path = self.root / naming.STATE_DIR / f"{run}.json"
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def lock_holder(self) -> dict[str, Any]:
        """Who holds the project lock right now ({} if nobody)."""
        path = self.root / naming.LOCK_FILE
        if not path.exists():
            return {}
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                try:
                    return dict(json.loads(fh.read() or "{}"))
                except ValueError:
                    return {"pid": 0}
            fcntl.flock(fh, fcntl.LOCK_UN)
        return {}

    @contextmanager
    def lock(self, run: str, command: str) -> Iterator[ProjectLock]:
        """One mlfork writer per project. The OS drops the lock when the holder dies."""
        path = self.local("lock")
        fh = open(path, "a+")  # noqa: SIM115
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                try:
                    holder = json.loads(fh.read() or "{}")
                except ValueError:
                    holder = {}
                raise ProjectLocked(
                    int(holder.get("pid", 0)), holder.get("command", "unknown")
                ) from None
            fh.seek(0)
            previous = fh.read()
            lock = ProjectLock(fh, run, command)
            lock.reap_orphans(previous)
            lock.update()
            yield lock
        finally:
            fh.close()


class ProjectLock:
    def __init__(self, fh: Any, run: str, command: str) -> None:
        self._fh = fh
        self.run = run
        self.command = command
        self.children: list[tuple[int, float]] = []

    def update(self, children: list[tuple[int, float]] | None = None) -> None:
        if children is not None:
            self.children = children
        payload = {
            "pid": os.getpid(),
            "run": self.run,
            "command": self.command,
            "children": self.children,
        }
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(payload))
        self._fh.flush()

    @staticmethod
    def reap_orphans(previous: str, grace: float = 30.0) -> None:
        """Stage processes of an mlfork that was killed may still be writing outputs:
        wait for them (then kill them) before touching the workspace."""
        import psutil

        try:
            children = list(json.loads(previous or "{}").get("children") or [])
        except ValueError:
            return
        procs = []
        for pid, created in children:
            try:
                proc = psutil.Process(int(pid))
                if abs(proc.create_time() - float(created)) < 0.01:  # not a reused pid
                    procs.append(proc)
            except (psutil.Error, TypeError, ValueError):
                continue
        if not procs:
            return
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


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
