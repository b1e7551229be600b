"""mlfork: forkable ML runs on git, DVC, Hydra and MLflow.

The Python API mirrors the CLI; each function takes `path` (the project, default ".")
and keyword arguments named like the CLI's options, and returns plain data.

    import mlfork
    mlfork.init("demo")
    result = mlfork.run(path="demo", name="base", iterations=4)
    for info in mlfork.runs("demo"):
        print(info.name, info.done, info.headline_value)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlfork.errors import MlforkError

if TYPE_CHECKING:
    from mlfork.models import Checkpoint, RunInfo, RunResult
    from mlfork.ops.kernel.init import InitResult
    from mlfork.ops.mirroring.sync import SyncResult
    from mlfork.ops.running.fork import ForkResult

__version__ = "0.1.0"
__all__ = ["MlforkError", "init", "run", "resume", "branch", "runs", "log", "sync"]


def init(path: str = ".") -> InitResult:
    """`mlfork init PATH`."""
    from mlfork.ops.kernel.init import init as _init

    return _init(path)


def run(path: str = ".", **options: Any) -> RunResult:
    """`mlfork run`: name, iterations, timeout, stage_timeout, tags, overrides."""
    from mlfork.ops.running.start import start

    return start(path=path, **options)


def resume(path: str = ".", **options: Any) -> RunResult:
    """`mlfork resume`: run, iterations, timeout, stage_timeout."""
    from mlfork.ops.running.start import resume as _resume

    return _resume(path=path, **options)


def branch(path: str = ".", **options: Any) -> ForkResult:
    """`mlfork branch`: source, from_iteration, from_step, name, iterations, tags,
    inherit_tags, timeout, stage_timeout, switch, run, overrides. The result's `fork_run`,
    `fork_iteration` and `fork_step` say where the fork came from."""
    from mlfork.ops.running.fork import branch as _branch

    return _branch(path=path, **options)


def runs(path: str = ".") -> list[RunInfo]:
    """`mlfork runs`."""
    from mlfork.ops.kernel.lineage import runs as _runs

    return _runs(path)


def log(path: str = ".", run: str | None = None) -> list[Checkpoint]:
    """`mlfork log RUN`."""
    from mlfork.ops.kernel.lineage import log as _log

    return _log(path, run)


def sync(path: str = ".", rebuild: bool = False) -> SyncResult:
    """`mlfork sync [--rebuild]`."""
    from mlfork.ops.mirroring.sync import sync as _sync

    return _sync(path, rebuild)


# -- compare and review (issue 4) ---------------------------------------------------------------

__all__ += ["metrics", "tree", "diff", "plot", "report"]


def metrics(path: str = ".", runs: Any = None, **options: Any) -> Any:
    """`mlfork metrics RUN...` -> pandas.DataFrame (run, owner, iteration, metric, value,
    inherited). runs: a name or a list (default: the run checked out); mode ("stitched" or
    "own"), metrics (names), source ("auto", "tracking", "git"), fast (False forces the
    public MLflow API path)."""
    from mlfork.ops.comparing.stitch import metrics as _metrics

    return _metrics(path, runs, **options)


def tree(path: str = ".") -> Any:
    """`mlfork tree`: the root runs (ops.comparing.tree.TreeNode), each with its forks."""
    from mlfork.ops.comparing.tree import tree as _tree

    return _tree(path)


def diff(path: str = ".", a: str | None = None, b: str | None = None, **options: Any) -> Any:
    """`mlfork diff A B` -> ops.comparing.diff.DiffResult; source."""
    from mlfork.ops.comparing.diff import diff as _diff

    return _diff(path, a, b, **options)


def plot(path: str = ".", runs: Any = None, **options: Any) -> Any:
    """`mlfork plot RUN...` -> ops.plot.PlotResult; output, metric, x ("iteration" or
    "since-fork"), source. `mlfork.ops.comparing.plot.figure(...)` returns the figure unsaved."""
    from mlfork.ops.comparing.plot import plot as _plot

    return _plot(path, runs, **options)


def report(path: str = ".", fork: str | None = None, **options: Any) -> Any:
    """`mlfork report FORK` -> ops.report.ReportResult; base, output, assets, force,
    source."""
    from mlfork.ops.comparing.report import report as _report

    return _report(path, fork, **options)


# -- replay and verify (issue 5) ----------------------------------------------------------------

__all__ += ["replay", "verify"]


def replay(path: str = ".", run: str | None = None, **options: Any) -> Any:
    """`mlfork replay RUN` -> ops.replay.ReplayPlan (commands, environment diff, dataset
    checks); iteration. With launch=True (`--launch`) -> ops.replay.ReplayResult (the
    replay run and its comparison with the original); force, name, progress."""
    from mlfork.ops.replaying.launch import launch
    from mlfork.ops.replaying.plan import plan

    if options.pop("launch", False):
        return launch(path=path, run=run, **options)
    return plan(path=path, run=run, **options)


def verify(path: str = ".", run: str | None = None, **options: Any) -> Any:
    """`mlfork verify RUN --from-iteration N` -> ops.verify.VerifyResult; from_iteration,
    iterations, keep, progress."""
    from mlfork.ops.replaying.verify import verify as _verify

    return _verify(path=path, run=run, **options)
