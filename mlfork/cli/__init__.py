"""The `mlfork` command line: thin commands over `mlfork.ops`.

Only click is imported at start-up; each command's module is imported when it runs, and
the operations import dvc, mlflow, hydra and pandas inside their functions.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# command name -> (module under mlfork.cli, one-line help shown by `mlfork --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("init", "Create an example project, or adopt an existing git+DVC project."),
    "run": ("run", "Start a run: a branch mlfork/NAME with one commit per stage per iteration."),
    "resume": ("resume", "Continue runs from their first uncommitted stage; several side by side."),
    "branch": ("branch", "Fork a run at a checkpoint into a new run."),
    "sweep": ("sweep", "Fork a run once per swept value; run the forks side by side."),
    "merge": ("merge", "Average runs' checkpoints (a model soup) into a new run."),
    "runs": ("runs", "List the runs: parent, fork point, status, progress, headline metric."),
    "log": ("log", "List a run's checkpoints with their metrics."),
    "sync": ("sync", "Deliver pending tracking writes; bring MLflow up to date with git."),
    "ui": ("ui", "Start the MLflow UI on 127.0.0.1 for the project's tracking store."),
    "metrics": ("metrics", "Print runs' metric series, stitched over their lineage."),
    "tree": ("tree", "Show every run as a tree of forks, with fork points and headlines."),
    "diff": ("diff", "Compare two runs: overrides, config, metrics, comparability."),
    "plot": ("plot", "Plot stitched metric curves with a dashed line at each fork point."),
    "report": ("report", "Write a Markdown pull-request report of a fork."),
    "replay": ("replay", "Print the commands that reproduce a run, or --launch and compare."),
    "verify": ("verify", "Fork a run without overrides, resume, check it reproduces the run."),
    "rm": ("rm", "Remove a run: its branch, local state and MLflow run."),
    "push": ("push", "Share runs: their checkpoints' DVC objects, then their branches."),
    "pull": ("pull", "Fetch a remote's runs; new ones become local, behind ones move up."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise click.UsageError(
                f"unknown command '{name}': {hint}('mlfork --help' lists the commands)"
            )
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"mlfork.cli.{COMMANDS[cmd_name][0]}")
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show stage output and full tracebacks.")
@click.version_option(package_name="mlfork-runs", prog_name="mlfork")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """mlfork: forkable ML runs on git, DVC, Hydra and MLflow.

    Every iteration of a run is a git commit with DVC-tracked artifacts and a
    Hydra-composed config; a fork is a branch at a checkpoint commit.

    \b
    Start:    mlfork init demo && cd demo && mlfork run --name base --iterations 4
    Inspect:  mlfork runs; mlfork log base
    Fork:     mlfork branch --from-iteration 1 --name lr model.lr=0.05 --run
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def _freeze_at_exit() -> None:
    """At exit, let the interpreter's final garbage collections skip the objects that
    mlflow, pandas and SQLAlchemy leave behind (about 175,000): measured on a loaded 2-CPU
    machine, the shutdown after `mlfork branch` took 2.3 to 2.9 s, frozen 0.2 s. atexit
    handlers and buffered output are unaffected; in-process callers pay nothing until
    their own exit."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)  # once, however often main() runs in a process
    atexit.register(gc.freeze)


def _configure_process() -> None:
    """What the command line sets for its own process (library code never does): quiet
    logging from the libraries it drives, and MLflow's HTTP retries and URL printing (a
    tracking server that is down costs seconds, not minutes; stdout holds only data)."""
    import logging
    import os

    for name in ("dvc", "dvc_data", "dvc_objects"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # mlfork reports their failures itself, in one line. MLflow sets its own logger's level
    # when it is imported: its subpackages' loggers keep the level set here.
    for name in ("mlflow", "mlflow.store", "mlflow.tracking", "mlflow.utils", "alembic",
                 "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _usage_line(exc: click.ClickException) -> str:
    """A click error as one line: the message, and where the usage is described."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "mlfork"
    if isinstance(exc, click.UsageError) and not message.startswith("unknown command"):
        message += f" (see '{command} --help')"
    return message


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (`mlfork log | head -1`): stop quietly, as git does."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)  # 128 + SIGPIPE, the status a shell reports for git in the same case


def main(argv: list[str] | None = None) -> Any:
    from mlfork.errors import MlforkError

    _freeze_at_exit()
    _configure_process()
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        # click's own main() turns a broken pipe into exit 1: invoke the group directly
        with cli.make_context("mlfork", list(args)) as ctx:
            result = cli.invoke(ctx)
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        _quiet_broken_pipe()
    except click.exceptions.Abort:
        click.echo("mlfork: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # plain `mlfork`: the help
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(0)
    except click.ClickException as exc:
        click.echo(f"mlfork: error: {_usage_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except MlforkError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"mlfork: error: {' '.join(str(exc).split())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("mlfork: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        from mlfork.errors import WRITE_ERRNOS, write_error

        if exc.errno not in WRITE_ERRNOS:
            _internal_error(exc, verbose)
        error = write_error(exc)
        click.echo(f"mlfork: error: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as exc:  # a bug: one line unless -v
        _internal_error(exc, verbose)


def _internal_error(exc: BaseException, verbose: bool) -> None:
    """A bug: one line (the traceback with -v), exit 1."""
    if verbose:
        raise exc
    text = " ".join(str(exc).split())
    click.echo(
        f"mlfork: internal error: {type(exc).__name__}: {text[:300]} (run with -v for details)",
        err=True,
    )
    sys.exit(1)
