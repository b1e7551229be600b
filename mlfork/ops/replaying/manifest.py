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

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from mlfork import naming
from mlfork.errors import MalformedFile
from mlfork.models import RunRecord
from mlfork.nested import flatten
from mlfork.ops.replaying import fingerprint

MANIFEST_VERSION = 1
REPLAY_SOURCE = naming.REPLAY_MANIFEST


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
    changes = fingerprint.diff_environment(data.get("environment"))
    return [*loaded.warnings] + [f"{head}: {change.line()}" for change in changes]


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


def seed_bundle(config: dict[str, Any], pythonhashseed: str) -> dict[str, Any]:
    """The seeds mlfork knows of: the config's `seed` keys and the PYTHONHASHSEED it gave
    the stages. What a stage seeds from them is the stage's own business (not recorded)."""
    leaves = flatten(config, lists=True).items()
    seeds = {k: v for k, v in leaves if k.split(".")[-1] == "seed" or k == "seed"}
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
        "environment": fingerprint.environment(),
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
