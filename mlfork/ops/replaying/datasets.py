"""Dataset identity: the hashes DVC already holds for DVC-tracked data (nothing is read), and
SHA-256, streamed and remembered by size/mtime/inode, for files a locked key names that DVC
does not track."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mlfork import naming
from mlfork.models import Pipeline
from mlfork.nested import flatten

CHUNK = 1 << 20  # SHA-256 streams 1 MiB at a time: a multi-GB file never sits in memory


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


class HashCache:
    """SHA-256 of non-DVC files, remembered by (size, mtime, inode) in .mlfork/local/ so that
    an unchanged multi-GB file is read once, not every iteration (DVC does the same)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, file: Path, key: str) -> tuple[str, int]:
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit and hit.get("stat") == stamp:
            return str(hit["sha256"]), st.st_size
        digest = sha256_file(file)
        self.entries[key] = {"stat": stamp, "sha256": digest}
        if self.path is not None:
            self.path.write_text(json.dumps(self.entries, sort_keys=True), encoding="utf-8")
        return digest, st.st_size


def sources_of(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """`path -> {md5, size[, nfiles]}` of the data `.dvc` files track (the hashes DVC
    already holds: no data is read)."""
    found: dict[str, dict[str, Any]] = {}
    for out in pipeline.sources:
        entry: dict[str, Any] = {"md5": out.md5, "size": out.size}
        if out.nfiles is not None:
            entry["nfiles"] = out.nfiles
        found[out.path] = entry
    return dict(sorted(found.items()))


def stage_params(pipeline: Pipeline) -> dict[str, list[str]]:
    """stage -> the params.yaml keys it reads (every key of a whole-file dependency)."""
    out: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        keys: list[str] = []
        for file, tracked in stage.params:
            keys += list(tracked) if tracked else (["*"] if file == naming.PARAMS_FILE else [])
        out[stage.name] = keys
    return out


def stage_outs(pipeline: Pipeline) -> dict[str, list[str]]:
    """stage -> its data outputs (metrics and plots are results, not inputs)."""
    return {
        s.name: [o.path for o in s.outs if not o.metric and not o.plot] for s in pipeline.stages
    }


def datasets(
    root: Path,
    config: dict[str, Any],
    locked: tuple[str, ...],
    outs: dict[str, dict[str, Any]],
    dvc_files: dict[str, dict[str, Any]],
    stage_params: dict[str, list[str]],
    stage_outs: dict[str, list[str]],
    exclude: tuple[str, ...] = (),
    cache: HashCache | None = None,
) -> dict[str, Any]:
    """Dataset identity: the outputs of stages that read a locked key and the DVC-tracked
    files (hashes DVC already holds: nothing is read), plus files a locked key names that
    DVC does not track (SHA-256, streamed). `outs`: the stage outputs the dvc.lock files
    record, project-relative."""
    found: dict[str, Any] = {}

    def reads_locked(params: list[str]) -> bool:
        return any(p == "*" or p == k or p.startswith(k + ".") or k.startswith(p + ".")
                   for p in params for k in locked)

    for stage, params in stage_params.items():
        if not reads_locked(params):
            continue
        for out in stage_outs.get(stage, []):
            if out in outs and out not in exclude:
                entry = outs[out]
                found[out] = {"source": "dvc", "md5": entry.get("md5"), "size": entry.get("size")}
    for path, entry in dvc_files.items():
        if path not in exclude:
            found[path] = {"source": "dvc", "md5": entry.get("md5"), "size": entry.get("size")}
            if entry.get("nfiles") is not None:
                found[path]["nfiles"] = entry["nfiles"]
    tracked = set(outs) | set(dvc_files)
    for key, value in flatten({k: config[k] for k in locked if k in config}, lists=True).items():
        if not isinstance(value, str) or not value or "\n" in value:
            continue
        candidate = Path(value) if os.path.isabs(value) else root / value
        try:
            if not candidate.is_file():
                continue
        except OSError:
            continue
        rel = os.path.relpath(candidate, root) if not os.path.isabs(value) else value
        if rel in tracked:
            continue
        hc = cache or HashCache(None)
        digest, size = hc.sha256(candidate, str(candidate))
        found[rel] = {"source": "sha256", "sha256": digest, "size": size, "key": key}
    return dict(sorted(found.items()))
