"""The README, run: its console examples are executed as written (after the environment
setup lines), and every output line they show must match what mlfork prints, numbers,
hashes and timings aside; its Python example runs as is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = str(Path(sys.executable).parent)


def blocks(kind: str, heading: str) -> list[str]:
    """The fenced `kind` blocks under the README's `heading` (up to the next heading)."""
    text = "\n" + README.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = re.search(r"\n#{1,3} ", text[start + len(heading) + 2:])
    section = text[start: start + len(heading) + 2 + end.start()] if end else text[start:]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)


def session(block: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines the README shows for it) for every `$ ` line."""
    out: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out and line.strip() and line.strip() != "...":
            out[-1][1].append(line)
    return out


def pattern(shown: str) -> re.Pattern[str]:
    """A shown output line as a pattern: numbers, hashes and column padding may differ."""
    parts = re.split(r"(\s+|[0-9a-f]{7,40}|\d+(?:\.\d+)?)", shown.strip())
    regex = ""
    for part in parts:
        if not part:
            continue
        if part.isspace():
            regex += r"\s+"
        elif re.fullmatch(r"[0-9a-f]{7,40}", part) and not part.isdigit():
            regex += "[0-9a-f]{7,40}"
        elif re.fullmatch(r"\d+(?:\.\d+)?", part):
            regex += r"\d+(?:\.\d+)?"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def replay(block: str, cwd: Path, skip: int = 0) -> None:
    """Run a console session's commands in one shell, in order; check each shown line."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for command, shown in session(block)[skip:]:
        proc = subprocess.run(["bash", "-c", f"{command}\necho \"@@cwd=$PWD\""], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        output = proc.stdout + proc.stderr
        cwd = Path(re.findall(r"@@cwd=(.*)", proc.stdout)[-1])  # `cd demo` carries over
        lines = [ln for ln in output.splitlines() if not ln.startswith("@@cwd=")]
        for line in shown:
            assert any(pattern(line).fullmatch(ln.strip()) for ln in lines), (
                f"'{command}' printed no line like {line!r}:\n" + "\n".join(lines[-30:])
            )


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    (block,) = blocks("console", "## Quickstart")
    first = session(block)[0][0]
    assert "pip install" in first  # the environment setup is what this suite already has
    replay(block, tmp_path, skip=2)
    assert (tmp_path / "demo" / ".mlfork").is_dir()


@pytest.mark.slow
def test_the_opening_example_runs_as_written(tmp_path: Path) -> None:
    """The example at the top of the README, in a fresh `mlfork init` project."""
    (block,) = blocks("console", "# mlfork")[:1]
    subprocess.run([f"{BIN}/mlfork", "init", "p"], cwd=tmp_path, check=True,
                   capture_output=True)
    replay(block, tmp_path / "p")


@pytest.mark.slow
def test_the_python_api_example_runs_as_written(tmp_path: Path) -> None:
    (code,) = blocks("python", "### Python API")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n") >= 3  # the fork's line, then one per run
