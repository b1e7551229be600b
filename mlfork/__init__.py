"""mlfork: forkable ML runs on git, DVC, Hydra and MLflow.

The Python API is the CLI's operations themselves, typed: each takes the project's `path`
(default ".") first, then, where the command has one, its run (`run`, `branch`'s source,
`report`'s fork), and keyword arguments named like the CLI's options; each returns plain
data (dataclasses, or a pandas DataFrame for `metrics`). Progress comes through an optional
`progress` callable; nothing is printed.

    import mlfork
    mlfork.init("demo")
    result = mlfork.run("demo", name="base", iterations=4)
    for info in mlfork.runs("demo"):
        print(info.name, info.done, info.headline_value)

The operations are imported on first use, so `import mlfork` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlfork.errors import MlforkError

if TYPE_CHECKING:
    from mlfork.ops.comparing.diff import diff as diff
    from mlfork.ops.comparing.plot import plot as plot
    from mlfork.ops.comparing.report import report as report
    from mlfork.ops.comparing.stitch import metrics as metrics
    from mlfork.ops.comparing.tree import tree as tree
    from mlfork.ops.kernel.init import init as init
    from mlfork.ops.kernel.lineage import log as log
    from mlfork.ops.kernel.lineage import runs as runs
    from mlfork.ops.mirroring.sync import sync as sync
    from mlfork.ops.replaying.launch import launch as launch_replay
    from mlfork.ops.replaying.plan import plan as replay
    from mlfork.ops.replaying.verify import verify as verify
    from mlfork.ops.running.fork import branch as branch
    from mlfork.ops.running.rm import rm as rm
    from mlfork.ops.running.start import resume as resume
    from mlfork.ops.running.start import start as run

__version__ = "0.1.0"

# public name -> (module, attribute): `mlfork run` is `start`, `mlfork replay` is `plan`
_OPERATIONS = {
    "init": ("mlfork.ops.kernel.init", "init"),
    "run": ("mlfork.ops.running.start", "start"),
    "resume": ("mlfork.ops.running.start", "resume"),
    "branch": ("mlfork.ops.running.fork", "branch"),
    "rm": ("mlfork.ops.running.rm", "rm"),
    "runs": ("mlfork.ops.kernel.lineage", "runs"),
    "log": ("mlfork.ops.kernel.lineage", "log"),
    "sync": ("mlfork.ops.mirroring.sync", "sync"),
    "metrics": ("mlfork.ops.comparing.stitch", "metrics"),
    "tree": ("mlfork.ops.comparing.tree", "tree"),
    "diff": ("mlfork.ops.comparing.diff", "diff"),
    "plot": ("mlfork.ops.comparing.plot", "plot"),
    "report": ("mlfork.ops.comparing.report", "report"),
    "replay": ("mlfork.ops.replaying.plan", "plan"),
    "launch_replay": ("mlfork.ops.replaying.launch", "launch"),
    "verify": ("mlfork.ops.replaying.verify", "verify"),
}
__all__ = [
    "MlforkError", "__version__", "init", "run", "resume", "branch", "rm", "runs", "log",
    "sync", "metrics", "tree", "diff", "plot", "report", "replay", "launch_replay", "verify",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _OPERATIONS[name]
    except KeyError:
        raise AttributeError(f"module 'mlfork' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
