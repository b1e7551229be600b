"""Replay manifests (`.mlfork/replay.json`, DESIGN.md section 7): every input that shaped an
iteration, committed with it. Never an environment variable's value, a credential or a path
of the machine.

Capturing one costs no read of the data: DVC-tracked data is identified by the hashes DVC
already wrote (dvc.lock, .dvc files); only files a locked key names that DVC does not track
are hashed (SHA-256, streamed, remembered by size/mtime/inode between iterations). The
environment fingerprint is computed once per process from the installed distributions'
folder names, without parsing their metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mlfork import naming
from mlfork.errors import MalformedFile
from mlfork.models import Pipeline, RunRecord

MANIFEST_VERSION = 1
KEY_PACKAGES = (
    "dvc", "pygit2", "hydra-core", "omegaconf", "mlflow", "pandas", "numpy", "scikit-learn",
    "torch",
)
CHUNK = 1 << 20  # SHA-256 streams 1 MiB at a time: a multi-GB file never sits in memory
REPLAY_SOURCE = naming.REPLAY_MANIFEST


def _yaml(text: bytes | str | Any) -> Any:
    """YAML through libyaml when PyYAML has it (10x the pure-Python parser: dvc.lock is
    parsed on every iteration), else the pure-Python safe loader; same results."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


_DIST_DIR = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)\.(?:dist|egg)-info$")


def canonical_name(name: str) -> str:
    """PEP 503: `Scikit_Learn` -> `scikit-learn`."""
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def installed() -> dict[str, str]:
    """canonical name -> version of every installed distribution (the first on sys.path
    wins, as for `importlib.metadata.version`). Read from the `name-version.dist-info`
    folder names, which is what a wheel install writes; a distribution whose folder does
    not say it (an old `.egg-info`) has its metadata parsed."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        folder = getattr(dist, "_path", None)
        m = _DIST_DIR.match(getattr(folder, "name", "") or "")
        if m:
            name, version = m.group("name"), m.group("version")
        else:
            name, version = dist.metadata["Name"] or "", dist.version
        if name:
            found.setdefault(canonical_name(name), version)
    return found


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Python, platform, mlfork and key package versions, and a hash of every installed
    distribution (name==version, sorted). Computed once per process."""
    from mlfork import __version__

    everything = installed()
    packages = {name: everything[name] for name in KEY_PACKAGES if name in everything}
    lines = sorted(f"{name}=={version}" for name, version in everything.items())
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "mlfork": __version__,
        "packages": packages,
        "packages_hash": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "packages_count": len(lines),
    }


ENV_FIELDS = ("python", "implementation", "platform", "mlfork")


@dataclass(frozen=True)
class EnvChange:
    """One field of the environment fingerprint that differs (None: absent)."""

    field: str
    recorded: Any
    current: Any

    def line(self) -> str:
        def show(value: Any) -> str:
            if value is None:
                return "absent"
            if self.field == "packages_hash" and isinstance(value, str):
                value = value[:12]
            return repr(value)

        return f"{self.field}: {show(self.recorded)} -> {show(self.current)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff_environment(recorded: Any, current: dict[str, Any] | None = None) -> list[EnvChange]:
    """The fields of a recorded fingerprint that differ from `current` (this machine's)."""
    recorded = recorded if isinstance(recorded, dict) else {}
    current = current if current is not None else environment()
    changes = [
        EnvChange(name, recorded.get(name), current.get(name))
        for name in ENV_FIELDS
        if recorded.get(name) != current.get(name)
    ]
    rp = recorded.get("packages") if isinstance(recorded.get("packages"), dict) else {}
    cp = current.get("packages") or {}
    for name in sorted(set(rp) | set(cp)):
        if rp.get(name) != cp.get(name):
            changes.append(EnvChange(f"packages.{name}", rp.get(name), cp.get(name)))
    for name in ("packages_hash", "packages_count"):
        if recorded.get(name) != current.get(name):
            changes.append(EnvChange(name, recorded.get(name), current.get(name)))
    return changes


def drift_warnings(text: bytes | str | None, source: str = REPLAY_SOURCE) -> list[str]:
    """Warnings for forking or resuming from a commit whose manifest was made in another
    environment: one per differing field. No manifest, no warning; a malformed one is
    reported, never fatal (the fork or resume goes on)."""
    if not text:
        return []
    try:
        loaded = load(text, source)
    except MalformedFile as exc:
        return [f"{exc}: the environment was not compared"]
    data = loaded.data
    where = f"{data.get('run')} iteration {data.get('iteration')}"
    head = f"this machine's environment differs from the one that ran {where}"
    return [*loaded.warnings] + [
        f"{head}: {change.line()}" for change in diff_environment(data.get("environment"))
    ]


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
    """(dotted key, leaf value) pairs; list items are `key[i]`."""
    if isinstance(config, dict):
        out: list[tuple[str, Any]] = []
        for k, v in config.items():
            out += _walk(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(config, list):
        out = []
        for i, v in enumerate(config):
            out += _walk(v, f"{prefix}[{i}]")
        return out
    return [(prefix, config)]


def safe_tracking(uri: str) -> str:
    """The tracking store as a manifest may name it: `embedded`, or a URI without user,
    password, query or fragment (where tokens travel), and without a local path."""
    from urllib.parse import urlsplit, urlunsplit

    if uri == "embedded":
        return uri
    parts = urlsplit(uri)
    if not parts.scheme:  # `databricks`, or a bare path
        return uri if "/" not in uri and "@" not in uri else "file:(a local path)"
    if parts.scheme in ("file", "sqlite") or not parts.hostname:
        return f"{parts.scheme}:(a local path)"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL"
    r"|(?:^|_)(?:API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|AUTH|PAT)(?:_|$)",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
REDACTED = "***"


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names say they are secrets (8+ chars),
    longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def scrub(value: Any, secrets: list[str]) -> Any:
    """Defence in depth over every string of a manifest: credentials in URLs dropped, and
    the value of any secret-named environment variable (an `${oc.env:...}` in the config,
    a token pasted into an override) replaced by `***`."""
    if isinstance(value, str):
        value = _URL_USERINFO.sub(r"\1", value)
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    return value


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
    from mlfork.adapters.dvc import lock_outputs

    outs = lock_outputs(lock_text)
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
    """The seeds mlfork knows of: the config's `seed` keys and the PYTHONHASHSEED it gave
    the stages. What a stage seeds from them is the stage's own business (not recorded)."""
    seeds = {k: v for k, v in _walk(config) if k.split(".")[-1] == "seed" or k == "seed"}
    return {
        "config_seed": config.get("seed"),
        "config_seeds": seeds,
        "PYTHONHASHSEED": pythonhashseed,
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
    user_commits: list[str] | None = None,
) -> dict[str, Any]:
    parent = None
    if rec.parent is not None:
        parent = {
            "run": rec.parent.run,
            "iteration": rec.parent.iteration,
            "step": rec.parent.step,
            "commit": rec.parent.commit,
        }
    doc = {
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
        "user_commits": list(user_commits or []),
        "base_commit": rec.base_commit,
        "tracking": safe_tracking(tracking),
    }
    scrubbed: dict[str, Any] = scrub(doc, secret_values())
    return scrubbed


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

    @property
    def newer(self) -> bool:
        """Written by a newer mlfork: only its seed and config are trusted."""
        return self.version > MANIFEST_VERSION

    @property
    def environment(self) -> dict[str, Any]:
        env = self.data.get("environment")
        return dict(env) if isinstance(env, dict) else {}

    @property
    def datasets(self) -> dict[str, dict[str, Any]]:
        data = self.data.get("datasets")
        return dict(data) if isinstance(data, dict) else {}


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
    if m.newer:
        m.warnings.append(
            f"{source} has manifest_version {m.version}, newer than this mlfork's"
            f" {MANIFEST_VERSION}: only its seed and config are used; upgrade mlfork for the rest"
        )
        return m
    if m.version < 1:
        raise MalformedFile(source, f"manifest_version {m.version} does not exist")
    if not isinstance(data.get("run"), str) or not isinstance(data.get("iteration"), int):
        raise MalformedFile(source, "'run' must be a string and 'iteration' an integer")
    if not isinstance(data.get("environment"), dict):
        raise MalformedFile(source, "'environment' must be a mapping")
    entries = data.get("datasets")
    if not isinstance(entries, dict) or not all(
        isinstance(e, dict) and e.get("source") in ("dvc", "sha256") for e in entries.values()
    ):
        raise MalformedFile(
            source, "'datasets' must map paths to entries with a source of 'dvc' or 'sha256'"
        )
    return m
