"""The environment fingerprint of a manifest: Python, platform, mlfork and key package
versions, and a hash of every installed distribution, computed once per process from the
installed distributions' folder names; and its difference from this machine's."""

from __future__ import annotations

import hashlib
import platform
import re
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

KEY_PACKAGES = (
    "dvc", "pygit2", "hydra-core", "omegaconf", "mlflow", "pandas", "numpy", "scikit-learn",
    "torch",
)


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
