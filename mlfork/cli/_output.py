"""Rendering shared by the commands: data to stdout, progress and notes to stderr."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

_ERR: Any = None


def err_stream() -> Any:
    """stderr as it was when mlfork started: stages redirect file descriptor 2 while they
    run, and progress must still reach the terminal."""
    global _ERR
    if _ERR is None:
        sys.stderr.flush()
        _ERR = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    return _ERR


def note(message: str) -> None:
    click.echo(message, file=err_stream())


def warn(message: str) -> None:
    click.echo(f"mlfork: warning: {message}", file=err_stream())


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A rich table on a terminal; aligned plain columns otherwise (stable for scripts)."""
    cells = [[fmt(c) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, header_style="bold")
        for h in headers:
            t.add_column(h)
        for row in cells:
            t.add_row(*row)
        Console().print(t)
        return
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    ]
    click.echo("\n".join(lines))


class ProgressView:
    """Renders run events: a live status line on a terminal, one plain line per stage
    otherwise. Used as the `progress` callback of the run operations."""

    def __init__(self) -> None:
        self.out = err_stream()
        self.live: Any = None
        self.started = time.monotonic()
        self.stage_started = self.started
        self.current = ""
        if self.out.isatty():
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._text = Text
            self.console = Console(file=self.out)
            self.live = Live(
                self._render(), console=self.console, refresh_per_second=8, transient=True,
                get_renderable=self._render, redirect_stdout=False, redirect_stderr=False,
            )
            self.live.start()

    def _render(self) -> Any:
        elapsed = time.monotonic() - self.started
        stage = time.monotonic() - self.stage_started
        return self._text(f"{self.current}  stage {stage:5.1f}s  total {elapsed:6.1f}s")

    def __call__(self, event: Any) -> None:
        kind = event.kind
        where = f"{event.run} iteration {event.iteration}/{(event.budget or 0) - 1}"
        if kind == "stage_start":
            self.stage_started = time.monotonic()
            self.current = f"{where} {event.stage}"
        elif kind == "stage_end":
            state = f"ran {event.seconds:.2f}s" if event.ran else "up to date"
            self._line(f"{where} {event.stage}: {state}")
        elif kind == "iteration_end" and event.metrics:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(event.metrics.items())[:6])
            self._line(f"{where} done: {shown}")
        elif kind == "warning":
            self._line(f"mlfork: warning: {event.message}")
        elif kind == "note":
            self._line(event.message)

    def _line(self, text: str) -> None:
        if self.live is not None:
            self.console.print(text, highlight=False)
        else:
            click.echo(text, file=self.out)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render_run_result(result: Any) -> None:
    """The summary after run/resume, and the next command to type."""
    headline = (
        f", {result.headline}={result.headline_value:.4f}"
        if result.headline and result.headline_value is not None
        else ""
    )
    note(
        f"run '{result.name}' {result.status}: {result.done}/{result.budget} iterations"
        f"{headline} (branch mlfork/{result.name}, {result.tip[:10]})"
    )
    if result.status == "completed":
        fork = (f"mlfork branch --from-iteration {max(result.done - 2, 0)}"
                f" --name {result.name}-fork")
        if result.suggestion:
            fork += f" {result.suggestion}"
        note(f"next: mlfork log {result.name}  |  {fork} --run")
    else:
        note(f"next: mlfork resume {result.name}")


def render_jobs(result: Any) -> None:
    """The jobs of a sweep or of `resume --jobs`: one row each, then the failures' commands."""
    rows = [
        (job.run, job.status or ("completed" if job.ok else "failed"),
         f"{job.done}/{job.budget}",
         f"{job.headline}={fmt(job.headline_value)}" if job.headline else "-",
         "ok" if job.ok else f"exit {job.returncode}")
        for job in result.jobs
    ]
    table(["run", "status", "iterations", "headline", "job"], rows)
    ok = len(result.jobs) - len(result.failed)
    note(f"{ok} of {len(result.jobs)} job(s) ran to their end in {result.seconds:.1f}s"
         f" ({result.executor}, {result.parallel} at a time)")
    for job in result.failed:
        note(f"{job.run}: {job.error} (log {job.log}); go on with: {job.resume}")
