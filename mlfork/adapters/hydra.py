"""The Hydra adapter: the only module that imports hydra and omegaconf.

Configs are composed through Hydra's compose API inside `initialize_config_dir`, which
restores Hydra's global state on exit, and returned as plain dicts. Projects without a
`conf/` folder use their `params.yaml` as the config and get the same override grammar
applied to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfork import naming
from mlfork.errors import ConfigError, OverrideError

VERSION_BASE = "1.3"
RESOLVER = re.compile(r"\$\{\s*([\w.\-]+)\s*:")  # `${oc.env:VAR}`, `${my.resolver:x}`


def resolver_uses(text: bytes | str) -> list[tuple[str, str]]:
    """(dotted key, resolver) for every value of a YAML text that calls a resolver
    (`${oc.env:AWS_SECRET}`): composed, it reads this machine's environment or anything
    else the resolver reads, and the result is committed."""
    import yaml

    from mlfork.nested import flatten, load_yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError:
        return []
    found: list[tuple[str, str]] = []
    for key, value in flatten(data, lists=True).items():
        m = RESOLVER.search(value) if isinstance(value, str) else None
        if m:
            found.append((key, m.group(1)))
    return found


@dataclass(frozen=True)
class ParsedOverride:
    text: str
    key: str  # dotted key or config group, without +/++/~ prefix
    kind: str  # "change", "add", "force_add", "delete"
    prefix: str  # "", "+", "++" or "~"
    value_text: str | None
    file: str | None = None  # a params file other than the main config (`train.yaml:lr=1`)

    def with_value(self, value: str) -> str:
        return naming.format_params_file(self.file, f"{self.prefix}{self.key}={value}")


def parse_overrides(overrides: list[str]) -> list[ParsedOverride]:
    """Parse with Hydra's own grammar (after DVC's `file:` prefix, if any); one bad
    override is an OverrideError naming it."""
    if not overrides:  # nothing to parse: Hydra's import is not paid for
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed: list[ParsedOverride] = []
    for text in overrides:
        file, body = naming.split_params_file(text)
        if file is not None and (not file or file.startswith("/") or ".." in file.split("/")):
            raise OverrideError(text, "the params file must be a path inside the project")
        try:
            (ov,) = parser.parse_overrides([body])
        except HydraException as exc:
            raise OverrideError(text, _first_line(exc)) from exc
        if ov.is_sweep_override():
            raise OverrideError(text, "sweeps are not supported: give one value per run")
        if ov.package is not None:
            raise OverrideError(text, "package overrides (@pkg) are not supported")
        resolver = RESOLVER.search(body.split("=", 1)[1] if "=" in body else "")
        if resolver:
            raise OverrideError(
                text, f"it calls the resolver '{resolver.group(1)}', whose value would be read"
                " on this machine and committed (params.yaml, MLflow): give the value itself"
            )
        kind = {
            OverrideType.CHANGE: "change",
            OverrideType.ADD: "add",
            OverrideType.FORCE_ADD: "force_add",
            OverrideType.DEL: "delete",
        }[ov.type]
        prefix = {"change": "", "add": "+", "force_add": "++", "delete": "~"}[kind]
        value_text = body.split("=", 1)[1] if "=" in body else None
        parsed.append(ParsedOverride(text, ov.key_or_group, kind, prefix, value_text, file))
    return parsed


@dataclass(frozen=True)
class Combination:
    """One point of a sweep: its overrides (one value each) and the swept keys' values."""

    overrides: list[str]
    swept: list[tuple[str, str]]  # (key, value) of each swept override


def expand_sweep(overrides: list[str]) -> list[Combination]:
    """Hydra's multirun grammar (`k=a,b`, `k=range(1,4)`, `k=choice(a,b)`, a config group
    `model=mlp,cnn`, a params file's `train.yaml:lr=1,2`): every combination, in Hydra's
    order (the product of the sweeps, the last one varying fastest)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    axes: list[list[tuple[str, tuple[str, str] | None]]] = []
    for text in overrides:
        file, body = naming.split_params_file(text)
        try:
            (ov,) = parser.parse_overrides([body])
        except HydraException as exc:
            raise OverrideError(text, _first_line(exc)) from exc
        if not ov.is_sweep_override():
            axes.append([(text, None)])
            continue
        if not ov.is_discrete_sweep():
            raise OverrideError(text, "an interval is for an optimizer: list the values"
                                      " (k=a,b,c), or give range(start,stop,step)")
        try:
            values = list(ov.sweep_string_iterator())
        except HydraException as exc:  # glob(): the options are not known here
            raise OverrideError(text, f"{_first_line(exc)}: list the values") from exc
        key = ov.get_key_element()
        axes.append([(naming.format_params_file(file, f"{key}={v}"), (ov.key_or_group, v))
                     for v in values])
    return [
        Combination([t for t, _ in combo], [kv for _, kv in combo if kv is not None])
        for combo in itertools.product(*axes)
    ]


def main_overrides(overrides: list[str]) -> list[str]:
    """The overrides of the main config (those without a params-file prefix), as Hydra
    takes them."""
    out = []
    for text in overrides:
        file, body = naming.split_params_file(text)
        if file is None:
            out.append(body)
    return out


def compose(conf_dir: Path, overrides: list[str], config_name: str = "config") -> dict[str, Any]:
    """Compose `conf_dir/<config_name>.yaml` with `overrides` into a plain, resolved dict."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parse_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=VERSION_BASE):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        data = OmegaConf.to_container(cfg, resolve=True)
    except yaml.YAMLError as exc:
        text = " ".join(str(exc).replace(str(conf_dir.resolve()), "conf").split())
        raise ConfigError(f"conf/ is not valid YAML ({text}): fix the files under conf/") from exc
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise _composition_error(
            exc, overrides, lambda: compose(conf_dir, [], config_name)
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError("the composed config is not a mapping: fix the files under conf/")
    return {str(k): v for k, v in data.items()}


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The override grammar applied to a plain config (the `params.yaml`-only mode)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parse_overrides(overrides)
    cfg = OmegaConf.create(base)
    OmegaConf.set_struct(cfg, True)
    parser = OverridesParser.create()
    for text in overrides:
        try:
            ConfigLoaderImpl._apply_overrides_to_config(parser.parse_overrides([text]), cfg)
        except (HydraException, OmegaConfBaseException) as exc:
            raise OverrideError(text, _first_line(exc)) from exc
    data = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(data, dict):
        raise ConfigError("the composed config is not a mapping: fix the files under conf/")
    return {str(k): v for k, v in data.items()}


def _composition_error(exc: Exception, overrides: list[str], compose_plain: Any) -> Exception:
    """Blame the override Hydra names; if none is named, blame the config if it fails alone."""
    reason = _first_line(exc)
    for text in overrides:
        key = text.lstrip("+~").split("=", 1)[0]
        if key and (f"'{key}'" in str(exc) or f"'{key.replace('.', '/')}" in str(exc)):
            return OverrideError(text, reason)
    if overrides:
        try:
            compose_plain()
        except ConfigError as plain:
            return plain
        return OverrideError(" ".join(overrides), reason)
    return ConfigError(f"conf/ cannot be composed: {reason}; fix the files under conf/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("Config search path:")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 2 and lines[1].endswith(":"):  # "Available options in 'model':", one a line
        return f"{lines[0]} {lines[1]} {', '.join(lines[2:])}"
    return " ".join(lines[:2]) if lines else type(exc).__name__


