"""A run's metrics at a commit, found the way `dvc metrics show` finds them.

Which files are metrics is DVC's answer at that commit (stage `metrics:` outputs and the
top-level `metrics:` section dvclive writes; `foreach`, `matrix`, `vars` and templating
resolved by DVC). Asking DVC costs a DVC repository read at that commit, so the answer is
memoized by what it depends on: the DVC files' blobs (and, for a templated pipeline, the
params files its `vars` name). The values are read from git, or from the DVC cache for a
cached metrics file, and parsed by DVC's parser for the file's format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlfork import naming
from mlfork.nested import load_yaml
from mlfork.ops.kernel import memo

if TYPE_CHECKING:
    from mlfork.ops.kernel.project import Project


class MetricsReader:
    def __init__(self, project: Project) -> None:
        self.project = project
        self._files: dict[tuple[Any, ...], list[str]] = {}
        self._values: dict[str, dict[str, float]] = {}

    def key(self, rev: str) -> tuple[Any, ...]:
        git = self.project.git
        dvcfiles = tuple(git.find_files(rev, "dvc.yaml"))
        key: list[Any] = [dvcfiles]
        for path, _ in dvcfiles:
            text = git.read(rev, path) or b""
            if b"${" in text:  # templated: the values of `vars` decide the paths too
                key.append(git.blob_id(rev, naming.PARAMS_FILE))
                for name in _vars_files(text):
                    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
                    key.append((name, git.blob_id(rev, folder + name)))
        return tuple(key)

    def files(self, rev: str) -> list[str]:
        """The metrics files DVC declares at `rev`, project-relative."""
        key = self.key(rev)
        if key not in self._files:
            if not key[0]:
                self._files[key] = []
            else:  # DVC's answer depends on the key alone: kept across commands
                found = memo.get(self.project, "metric-files", key)
                if not isinstance(found, list):
                    found = self.project.dvc.metric_files(rev)
                    memo.put(self.project, "metric-files", key, found)
                self._files[key] = [str(p) for p in found]
        return self._files[key]

    def at(self, rev: str) -> dict[str, float]:
        """Every metric at `rev`, flattened to `a.b -> float` (files in DVC's order; a key
        two files share takes the later file's value)."""
        if rev in self._values:
            return dict(self._values[rev])
        values: dict[str, float] = {}
        for path in self.files(rev):
            data = self._read(rev, path)
            if data is not None:
                from mlfork.adapters.dvc_files import parse_metrics

                values.update(parse_metrics(path, data))
        self._values[rev] = values
        return dict(values)

    def _read(self, rev: str, path: str) -> bytes | None:
        git = self.project.git
        data = git.read(rev, path)
        if data is not None:
            return data
        entry = self.project.outputs_at(rev).get(path)
        if entry and entry.get("md5") and not str(entry["md5"]).endswith(".dir"):
            try:
                return self.project.dvc.cache_path(str(entry["md5"])).read_bytes()
            except OSError:
                return None
        return self.project.dvc.read_at(rev, path)


def _vars_files(text: bytes) -> list[str]:
    """The file names a dvc.yaml's `vars:` list names (`file.yaml`, `file.yaml:k1,k2`)."""

    try:
        data = load_yaml(text) or {}
    except Exception:  # noqa: BLE001 - DVC reports a broken dvc.yaml itself
        return []
    out = []
    for item in data.get("vars") or [] if isinstance(data, dict) else []:
        if isinstance(item, str):
            out.append(item.split(":", 1)[0])
    return out
