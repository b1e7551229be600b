"""Named points where a test can kill mlfork as a power cut would.

`MLFORK_FAULT=<point>` (or `<point>:<n>`, the n-th time it is reached, default the first)
makes the process SIGKILL itself at that point. Without the variable a point costs one
comparison. The fault-injection tests (tests/test_kill.py) kill every command at every
point and check that the documented recovery leaves each (run, iteration, stage) committed
exactly once, git consistent, and the tracking store equal to git.
"""

from __future__ import annotations

import os
import signal

from mlfork.naming import ENV_FAULT

_SPEC = os.environ.get(ENV_FAULT) or None
_SEEN: dict[str, int] = {}


def point(name: str) -> None:
    """Die here if this is the point (and the time) `MLFORK_FAULT` names."""
    if _SPEC is None:
        return
    target, _, count = _SPEC.partition(":")
    if name != target:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == (int(count) if count.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
