"""`mlfork plot`: stitched curves, one colour per run, a dashed vertical line at each fork
point. matplotlib is used through its object API on an Agg canvas (no pyplot, no global
backend switch), imported inside the functions.

Also home of the output-path checks shared with `mlfork report`: a refused output writes
nothing, and the files of one command are written together (temporary files renamed into
place only once every one of them could be written).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlfork.errors import OutputPathError, UsageError
from mlfork.ops.comparing import chain, stitch
from mlfork.ops.comparing import diff as diffs
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

XAxis = Literal["iteration", "since-fork", "step"]
FORMATS = (".png", ".svg")


@dataclass(frozen=True)
class ForkLine:
    """A dashed vertical line: `run` forked from `parent` at `iteration` (after `step`)."""

    run: str
    parent: str
    iteration: int
    step: str | None
    x: float


@dataclass
class PlotResult:
    path: str | None
    metric: str
    runs: list[str]
    x: str
    fork_lines: list[ForkLine] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- output paths ------------------------------------------------------------------------------


def check_output(path: str | os.PathLike[str], what: str = "output",
                 suffixes: Sequence[str] = ()) -> Path:
    """The absolute path to write `path` to, or OutputPathError when its folder does not
    exist or cannot be written (checked before any work is done)."""
    target = Path(path).expanduser()
    if suffixes and target.suffix.lower() not in suffixes:
        raise UsageError(
            f"{what} '{path}' must end with {' or '.join(suffixes)}"
        )
    target = Path(os.path.abspath(target))
    folder = target.parent
    if target.is_dir():
        raise OutputPathError(f"cannot write {what} '{path}': it is a folder; give a file name")
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {what} '{path}': folder '{folder}' does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK) or (
        target.exists() and not os.access(target, os.W_OK)
    ):
        raise OutputPathError(f"cannot write {what} '{path}': '{folder}' is not writable")
    return target


def check_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """A folder to write into: it may be missing if its parent can hold it."""
    folder = Path(os.path.abspath(Path(path).expanduser()))
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"cannot write into {what} '{path}': it is a file")
    existing = folder if folder.is_dir() else folder.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"cannot write into {what} '{path}': '{existing}' does not exist; create it first"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write into {what} '{path}': '{existing}' is not writable")
    return folder


def write_files(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every file or none: each goes to a temporary file beside its target first,
    and the temporaries are renamed into place only when all of them were written."""
    staged: list[tuple[str, Path]] = []
    made: list[Path] = []
    target = files[0][0] if files else Path()
    try:
        for target, data in files:
            if not target.parent.exists():
                target.parent.mkdir()
                made.append(target.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
    except OSError as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(made):
            folder.rmdir()
        raise OutputPathError(
            f"cannot write '{target}': {exc.strerror or exc}; nothing was written"
        ) from exc
    for tmp, target in staged:
        os.replace(tmp, target)


# -- figure ------------------------------------------------------------------------------------


def fork_lines(chains: dict[str, list[chain.Link]], runs: Sequence[str],
               x: XAxis = "iteration") -> list[ForkLine]:
    """One line per fork point in the lineages of `runs` (at the fork iteration; half an
    iteration earlier for a fork inside an iteration), shifted for `since-fork`."""
    out: dict[tuple[str, float], ForkLine] = {}
    for run in runs:
        chain = chains[run]
        shift = _shift(chain) if x == "since-fork" else 0
        for k in range(1, len(chain)):
            link = chain[k]
            if link.iteration is None:
                continue
            at = float(link.iteration)
            if link.until is not None and link.until < link.iteration:
                at = link.until + 0.5
            line = ForkLine(link.run, chain[k - 1].run, link.iteration, link.step, at - shift)
            out.setdefault((line.run, line.x), line)
    return sorted(out.values(), key=lambda f: (f.x, f.run))


def step_fork_lines(df: pd.DataFrame, chains: dict[str, list[chain.Link]],
                    runs: Sequence[str]) -> list[ForkLine]:
    """`--x step`: one line per fork point at the last global step the fork inherits (where
    the owner of a stitched per-step series changes)."""
    out: dict[tuple[str, float], ForkLine] = {}
    for run in runs:
        links = {link.run: (k, link) for k, link in enumerate(chains[run])}
        sub = df[df["run"] == run].sort_values("step")
        owners = sub["owner"].tolist()
        steps = sub["step"].tolist()
        for i in range(1, len(owners)):
            if owners[i] == owners[i - 1] or owners[i] not in links:
                continue
            k, link = links[owners[i]]
            line = ForkLine(link.run, chains[run][k - 1].run if k else owners[i - 1],
                            link.iteration or 0, link.step, float(steps[i - 1]))
            out.setdefault((line.run, line.x), line)
    return sorted(out.values(), key=lambda f: (f.x, f.run))


def _shift(chain: list[chain.Link]) -> int:
    """`since-fork`: x = iteration - the last iteration the run inherited, so that its first
    own iteration is at 1 whether it forked after or inside an iteration (0 for a root)."""
    if len(chain) < 2 or chain[-1].until is None:
        return 0
    return chain[-1].until


def build_figure(
    df: pd.DataFrame,
    chains: dict[str, list[chain.Link]],
    runs: Sequence[str],
    metric: str,
    x: XAxis = "iteration",
    title: str | None = None,
) -> tuple[Figure, list[ForkLine]]:
    """The figure of `metric`'s stitched series of `runs` (df as `stitch.metrics` returns
    it). Inherited stretches are drawn faint, a run's own points bold; the own line starts
    at the last inherited point so that each curve stays continuous."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colour = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    data = df[df["metric"] == metric]
    col = "step" if x == "step" else "iteration"
    dots: dict[str, Any] = {} if x == "step" else {"marker": "o"}
    for run in runs:
        sub = data[data["run"] == run].sort_values(col)
        if sub.empty:
            continue
        chain = chains[run]
        shift = _shift(chain) if x == "since-fork" else 0
        xs = sub[col].to_numpy() - shift
        ys = sub["value"].to_numpy()
        own = ~sub["inherited"].to_numpy()
        parent = chain[-2].run if len(chain) > 1 else None
        last = chain[-1]
        at = where(last.iteration, last.step, last.until == last.iteration)
        label = run if parent is None else f"{run} (fork of {parent} @{at})"
        if (~own).any():
            ax.plot(xs[~own], ys[~own], color=colour[run], linewidth=1.4, alpha=0.45,
                    markersize=3, label="_nolegend_", **dots)
        if own.any():
            start = max(int(own.argmax()) - 1, 0)  # join the last inherited point
            ax.plot(xs[start:], ys[start:], color=colour[run], linewidth=2.2,
                    markersize=4.5, label=label, **dots)
            if dots:
                ax.plot(xs[own], ys[own], linestyle="none", marker="o", markersize=4.5,
                        color=colour[run], label="_nolegend_")
        else:
            ax.plot([], [], color=colour[run], linewidth=2.2, label=label)
    lines = step_fork_lines(data, chains, runs) if x == "step" else fork_lines(chains, runs, x)
    stacked: dict[float, int] = {}  # forks at the same point: labels side by side
    for fl in lines:
        c = colour.get(fl.run, "0.45")
        ax.axvline(fl.x, color=c, linestyle="--", linewidth=1.2, alpha=0.9,
                   label="_nolegend_")
        k = stacked[fl.x] = stacked.get(fl.x, -1) + 1
        ax.annotate(
            f"{fl.run} ← {fl.parent} @"
            + (f"step {fl.x:g}" if x == "step" else where(fl.iteration, fl.step, fl.x % 1 == 0)),
            xy=(fl.x, 1.0), xycoords=("data", "axes fraction"), xytext=(3 + 10 * k, -4),
            textcoords="offset points", rotation=90, va="top", ha="left", fontsize=8,
            color=c,
        )
    better = "lower is better" if diffs.direction(metric) == "lower" else "higher is better"
    ax.set_xlabel({"iteration": "iteration", "step": "step (global: across iterations and"
                   " forks)"}.get(x, "iterations since the run's fork point"))
    ax.set_ylabel(f"{metric} ({better})")
    ax.set_title(title or f"{metric}: stitched over forks ({', '.join(runs)})", fontsize=11)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.plot([], [], color="0.3", linestyle="--", linewidth=1.2, label="fork point")
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    return fig, lines


def where(iteration: int | None, step: str | None, at_end: bool) -> str:
    """`2` for a fork after iteration 2, `2/train` for one inside it."""
    return f"{iteration}" if at_end or not step else f"{iteration}/{step}"


def render(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt.lstrip("."))
    return buf.getvalue()


def figure(
    path: str | os.PathLike[str] = ".",
    runs: str | Sequence[str | None] | None = None,
    *,
    metric: str | None = None,
    x: XAxis = "iteration",
    source: stitch.Source = "auto",
) -> tuple[Figure, PlotResult]:
    """The figure `mlfork plot` saves, and what it shows (nothing written)."""
    if x not in ("iteration", "since-fork", "step"):
        raise UsageError(f"--x must be 'iteration', 'since-fork' or 'step', got {x!r}")
    if x == "step":
        return _step_figure(path, runs, metric, source)
    project = Project.open(path, require_dvc=False)
    names = stitch.resolve_runs(project, runs)
    if metric is None:
        metric = lineage.headline_at(project, lineage.tip(project, names[0]))[0]
    if not stitch.logs_metrics(project, names):
        raise stitch.NotFound(f"{stitch.NO_METRICS}: nothing to plot")
    if metric is None:  # no val_metric: the first metric logged
        every = stitch.metrics(path, names, source=source)
        if every.empty:
            raise stitch.NotFound(f"no metric was logged by {', '.join(names)}: nothing to plot")
        metric = str(sorted(every["metric"].unique())[0])
    df = stitch.metrics(path, names, metrics=[metric], source=source)
    chains = {n: chain.chain_from_git(project, n) for n in names}
    fig, lines = build_figure(df, chains, names, metric, x)
    return fig, PlotResult(None, metric, names, x, lines, str(df.attrs.get("source", "")))


def _step_figure(path: str | os.PathLike[str], runs: Any, metric: str | None,
                 source: stitch.Source) -> tuple[Figure, PlotResult]:
    """`--x step`: the per-step series (the first one logged, unless `metric` names one)."""
    project = Project.open(path, require_dvc=False)
    names = stitch.resolve_runs(project, runs)
    every = stitch.steps(path, names, metrics=[metric] if metric else [], source=source)
    if every.empty:
        raise stitch.NotFound(f"{every.attrs.get('note') or stitch.NO_STEPS}: nothing to plot")
    metric = metric or str(sorted(every["metric"].unique())[0])
    df = every[every["metric"] == metric]
    chains = {n: chain.chain_from_git(project, n) for n in names}
    fig, lines = build_figure(df, chains, names, metric, "step")
    return fig, PlotResult(None, metric, names, "step", lines, str(every.attrs.get("source", "")))


def plot(
    path: str | os.PathLike[str] = ".",
    runs: str | Sequence[str | None] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    metric: str | None = None,
    x: XAxis = "iteration",
    source: stitch.Source = "auto",
) -> PlotResult:
    """`mlfork plot`: save the stitched curves to `output` (.png or .svg; default
    `<first run>-<metric>.png` in the current folder)."""
    target = check_output(output, "plot", FORMATS) if output is not None else None
    fig, result = figure(path, runs, metric=metric, x=x, source=source)
    if target is None:
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in result.metric)
        target = check_output(f"{result.runs[0]}-{safe}.png", "plot", FORMATS)
    write_files([(target, render(fig, target.suffix))])
    result.path = str(target)
    return result
