"""Replay manifests (`.mlfork/replay.json`, DESIGN.md section 7): every input that shaped an
iteration, committed with it. Never an environment variable's value, a credential or a path
of the machine."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .. import naming
from ..errors import MalformedFile
from ..models import RunRecord

MANIFEST_VERSION = 1
KEY_PACKAGES = (
    "dvc", "pygit2", "hydra-core", "omegaconf", "mlflow", "pandas", "numpy", "scikit-learn",
    "torch",
)
CHUNK = 1 << 20  # SHA-256 streams 1 MiB at a time: a multi-GB file never sits in memory


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Python, platform, mlfork and key package versions, and a hash of every installed
    distribution (name==version). Computed once per process."""
    from importlib import metadata

    from .. import __version__

    packages: dict[str, str] = {}
    for name in KEY_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    everything = sorted(
        {f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()}
    )
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "mlfork": __version__,
        "packages": packages,
        "packages_hash": hashlib.sha256("\n".join(everything).encode()).hexdigest(),
        "packages_count": len(everything),
    }


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


def _walk(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(config, dict):
        out: list[tuple[str, Any]] = []
        for k, v in config.items():
            out += _walk(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, config)]


def datasets(
    root: Path,
    config: dict[str, Any],
    locked: tuple[str, ...],
    lock_text: bytes | None,
    dvc_files: dict[str, dict[str, Any]],
    stage_params: dict[str, list[str]],
    stage_outs: dict[str, list[str]],
    exclude: tuple[str, ...] = (),
    cache: HashCache | None = None,
) -> dict[str, Any]:
    """Dataset identity: the outputs of stages that read a locked key and the DVC-tracked
    files (hashes DVC already holds: nothing is read), plus files a locked key names that
    DVC does not track (SHA-256, streamed)."""
    from ..adapters.dvc import DvcProject

    outs = DvcProject.lock_outputs(lock_text)
    found: dict[str, Any] = {}

    def reads_locked(params: list[str]) -> bool:
        return any(p == k or p.startswith(k + ".") or k.startswith(p + ".")
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
    tracked = set(outs) | set(dvc_files)
    for key, value in _walk({k: config[k] for k in locked if k in config}):
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


def seed_bundle(config: dict[str, Any], pythonhashseed: str) -> dict[str, Any]:
    seeds = {k: v for k, v in _walk(config) if k.split(".")[-1] == "seed" or k == "seed"}
    return {
        "config_seed": config.get("seed"),
        "config_seeds": seeds,
        "PYTHONHASHSEED": pythonhashseed,
        # what the example pipeline seeds from config_seed and restores from its checkpoint
        "pipeline": ["numpy.random.Generator", "numpy.random (legacy global)", "random"],
    }


def build(
    *,
    rec: RunRecord,
    iteration: int,
    argv: list[str],
    config: dict[str, Any],
    pythonhashseed: str,
    data: dict[str, Any],
    code_commit: str,
    tracking: str,
    created: str,
) -> dict[str, Any]:
    parent = None
    if rec.parent is not None:
        parent = {
            "run": rec.parent.run,
            "iteration": rec.parent.iteration,
            "step": rec.parent.step,
            "commit": rec.parent.commit,
        }
    return {
        "manifest_version": MANIFEST_VERSION,
        "run": rec.name,
        "iteration": iteration,
        "parent": parent,
        "created": created,
        "argv": list(argv),
        "run_argv": list(rec.argv),
        "overrides": list(rec.overrides),
        "own_overrides": list(rec.own_overrides),
        "seed": seed_bundle(config, pythonhashseed),
        "config": config,
        "datasets": data,
        "environment": environment(),
        "code_commit": code_commit,
        "base_commit": rec.base_commit,
        "tracking": tracking,
    }


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"


@dataclass
class Manifest:
    data: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def version(self) -> int:
        return int(self.data.get("manifest_version", 0))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.data.get("config") or {})

    @property
    def seed(self) -> dict[str, Any]:
        return dict(self.data.get("seed") or {})


def load(text: bytes | str, source: str = naming.REPLAY_MANIFEST) -> Manifest:
    """Parse a manifest. A newer version loads with a warning (seed and config still serve);
    a malformed one is a MalformedFile error."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MalformedFile(source, f"not JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("manifest_version"), int):
        raise MalformedFile(source, "no integer 'manifest_version'")
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("seed"), dict):
        raise MalformedFile(source, "'config' and 'seed' must be mappings")
    m = Manifest(data)
    if m.version > MANIFEST_VERSION:
        m.warnings.append(
            f"{source} has manifest_version {m.version}, newer than this mlfork's"
            f" {MANIFEST_VERSION}: only its seed and config are used; upgrade mlfork for the rest"
        )
    return m


def dvc_yaml_shape(dvc_yaml: bytes | None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(stage -> params keys, stage -> data output paths) from a dvc.yaml text."""
    data = yaml.safe_load(dvc_yaml or b"") or {}
    params: dict[str, list[str]] = {}
    outs: dict[str, list[str]] = {}
    for name, stage in (data.get("stages") or {}).items():
        if not isinstance(stage, dict):
            continue
        keys: list[str] = []
        for item in stage.get("params") or []:
            if isinstance(item, dict):
                for v in item.values():
                    keys += [str(x) for x in (v or [])]
            else:
                keys.append(str(item))
        params[name] = keys
        # data outputs only: metrics and plots files are results, not inputs
        outs[name] = [
            next(iter(item)) if isinstance(item, dict) else str(item)
            for item in stage.get("outs") or []
        ]
    return params, outs
