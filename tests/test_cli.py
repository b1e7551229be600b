"""The command line as a user meets it: help for every command, a light start-up path,
`--version`, and the listings (`runs`, `log`) in JSON and plain text, checked against git."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, git

import mlfork
from mlfork.cli import COMMANDS

# The commands of the run engine; COMMANDS may grow, these must stay.
CORE = {"init", "run", "resume", "branch", "runs", "log", "sync"}
HEAVY = ("mlflow", "dvc", "pandas", "hydra", "omegaconf", "matplotlib", "sklearn")
RUNS_FIELDS = {"name", "parent", "status", "done", "budget", "headline", "headline_value"}
LOG_FIELDS = {"iteration", "step", "commit", "run", "metrics"}
STAGES = ["data_split", "train", "evaluate"]


# -- help and version --------------------------------------------------------------------------


def test_help_lists_every_command(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: mlfork [OPTIONS] COMMAND [ARGS]...")
    section = proc.stdout.split("\nCommands:\n", 1)[1]
    listed = [line.split()[0] for line in section.splitlines() if line.startswith("  ")
              and not line.startswith("   ")]
    assert listed == list(COMMANDS)
    assert set(listed) >= CORE
    for name, (_, short) in COMMANDS.items():
        assert " ".join(short.split()[:3]) in " ".join(section.split()), name


def test_short_help_option(tmp_path: Path) -> None:
    long, short = cli(tmp_path, "--help"), cli(tmp_path, "-h")
    assert short.returncode == 0
    assert short.stdout == long.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help(tmp_path: Path, command: str) -> None:
    proc = cli(tmp_path, command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: mlfork {command} ")
    assert "--help" in proc.stdout
    assert proc.stderr == ""
    assert list(tmp_path.iterdir()) == []  # help writes nothing


def test_unknown_command(tmp_path: Path) -> None:
    proc = cli(tmp_path, "frobnicate")
    assert proc.returncode == 2
    assert proc.stderr == (
        "mlfork: error: unknown command 'frobnicate': ('mlfork --help' lists the commands)\n"
    )
    typo = cli(tmp_path, "brnch")
    assert typo.returncode == 2
    assert "unknown command 'brnch': did you mean 'branch'?" in typo.stderr


def test_version(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mlfork, version {mlfork.__version__}"
    from importlib.metadata import version

    assert version("mlfork-runs") == mlfork.__version__


# -- a light start-up path ---------------------------------------------------------------------

PROBE = """
import contextlib, io, json, sys
{code}
heavy = {heavy!r}
print(json.dumps(sorted({{m for m in sys.modules if m.split(".")[0] in heavy}})))
"""

HELP_ALL = """
from mlfork.cli import COMMANDS, main
for args in [["--help"], ["--version"]] + [[c, "--help"] for c in COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code in (0, None), (args, exc.code)
"""


def imported_heavy(code: str, cwd: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
        cwd=cwd, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    ["import mlfork", "import mlfork.cli", HELP_ALL],
    ids=["import-mlfork", "import-mlfork.cli", "every-help"],
)
def test_start_up_path_stays_light(tmp_path: Path, code: str) -> None:
    assert imported_heavy(code, tmp_path) == []


def test_the_probe_sees_heavy_imports(tmp_path: Path) -> None:
    """The probe itself works: an import of a heavy module is reported."""
    assert "omegaconf" in imported_heavy("import omegaconf", tmp_path)


# -- listings ----------------------------------------------------------------------------------


def trailers_of(root: Path, commit: str) -> tuple[str, str, str]:
    out = git(root, "log", "-1", "--format=%(trailers:key=Mlfork-Run,valueonly,separator=)|"
              "%(trailers:key=Mlfork-Iteration,valueonly,separator=)|"
              "%(trailers:key=Mlfork-Step,valueonly,separator=)", commit)
    run, iteration, step = out.strip().split("|")
    return run, iteration, step


def metrics_at(root: Path, commit: str) -> dict[str, float]:
    return dict(json.loads(git(root, "show", f"{commit}:metrics/val.json")))


def test_runs_json(base_project: Path) -> None:
    proc = cli(base_project, "runs", "--json")
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert isinstance(runs, list) and len(runs) == 1
    (run,) = runs
    assert set(run) >= RUNS_FIELDS
    tip = git(base_project, "rev-parse", "mlfork/base").strip()
    assert run["name"] == "base"
    assert run["parent"] is None
    assert (run["status"], run["done"], run["budget"]) == ("completed", 3, 3)
    assert run["headline"] == "accuracy"
    assert run["headline_value"] == pytest.approx(metrics_at(base_project, tip)["accuracy"])
    assert run.get("tip", tip) == tip


def test_runs_plain_has_one_row_per_run(base_project: Path) -> None:
    fork = cli(base_project, "branch", "--from", "base", "--from-iteration", "1",
               "--name", "fork1", "--no-switch")
    assert fork.returncode == 0, fork.stderr
    proc = cli(base_project, "runs")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:2] == ["run", "forked"]
    assert len(rows) == 2
    by_name = {row.lstrip("* ").split()[0]: row for row in rows}
    assert set(by_name) == {"base", "fork1"}
    assert by_name["base"].startswith("* base")  # checked out
    assert "3/3" in by_name["base"] and "completed" in by_name["base"]
    assert "base@1/evaluate" in by_name["fork1"]

    runs = json.loads(cli(base_project, "runs", "--json").stdout)
    assert [r["name"] for r in runs] == ["base", "fork1"]
    parent = runs[1]["parent"]
    assert (parent["run"], parent["iteration"], parent["step"]) == ("base", 1, "evaluate")
    assert trailers_of(base_project, parent["commit"]) == ("base", "1", "evaluate")


def test_runs_without_any_run(project: Path) -> None:
    proc = cli(project, "runs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    plain = cli(project, "runs")
    assert plain.returncode == 0
    assert plain.stdout == ""
    assert "mlfork run" in plain.stderr


def test_log_json(base_project: Path) -> None:
    proc = cli(base_project, "log", "base", "--json")
    assert proc.returncode == 0, proc.stderr
    cps = json.loads(proc.stdout)
    assert [(c["iteration"], c["step"]) for c in cps] == [
        (i, s) for i in range(3) for s in STAGES
    ]
    # the checkpoints are exactly the commits of the branch that carry checkpoint trailers
    branch = git(base_project, "rev-list", "--reverse", "--first-parent", "main..mlfork/base")
    with_step = [c for c in branch.split() if trailers_of(base_project, c)[2]]
    assert [c["commit"] for c in cps] == with_step
    for c in cps:
        assert set(c) >= LOG_FIELDS
        assert c["run"] == "base"
        assert trailers_of(base_project, c["commit"]) == ("base", str(c["iteration"]), c["step"])
        if c["step"] == "evaluate":
            assert c["metrics"] == pytest.approx(metrics_at(base_project, c["commit"]))
            assert set(c["metrics"]) >= {"accuracy", "f1_macro", "log_loss"}
        else:
            assert c["metrics"] == {}
    # the run checked out is the default
    default = cli(base_project, "log", "--json")
    assert json.loads(default.stdout) == cps


def test_log_plain(base_project: Path) -> None:
    proc = cli(base_project, "log", "base")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:4] == ["iteration", "step", "commit", "run"]
    assert len(rows) == 9
    assert [r.split()[:2] for r in rows] == [[str(i), s] for i in range(3) for s in STAGES]


def test_log_unknown_run(base_project: Path) -> None:
    proc = cli(base_project, "log", "nope", "--json")
    assert proc.returncode == 6
    assert proc.stdout == ""
    assert proc.stderr.strip() == "mlfork: error: unknown run 'nope' (runs: base)"
