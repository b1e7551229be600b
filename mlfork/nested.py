"""Nested data (configs, params files, metrics files, run records): YAML in and out, and
the one flattening to dotted keys that every listing, diff and mirror uses."""

from __future__ import annotations

from typing import Any

import yaml


def load_yaml(text: bytes | str | None) -> Any:
    """YAML through libyaml where PyYAML has it (10x the pure-Python parser: dvc.lock is
    parsed on every iteration), else the pure-Python safe loader; same results."""
    return yaml.load(text or b"", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def dump_yaml(data: dict[str, Any]) -> str:
    """Block style, keys in the data's order (what a person would write in params.yaml)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def flatten(data: Any, *, lists: bool = False, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; values keep their types and an empty dict is a value.
    With `lists`, list items are values of their own (`a.c[0]`); otherwise a list is one."""
    out: dict[str, Any] = {}
    if isinstance(data, dict) and data:
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten(value, lists=lists, prefix=name))
    elif lists and isinstance(data, list) and data:
        for i, value in enumerate(data):
            out.update(flatten(value, lists=lists, prefix=f"{prefix}[{i}]"))
    elif prefix:
        out[prefix] = data
    return out
