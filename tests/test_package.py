"""Packaging: the wheel carries the example project and the `mlfork` console script, and
`mlfork init` finds the example both in a source checkout and in an installed wheel."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, git

from mlfork.ops.kernel.init import EXAMPLE_FILES, example_dir

EXAMPLE_IN_WHEEL = [
    "mlfork/_example/conf/config.yaml",
    "mlfork/_example/dvc.yaml",
    "mlfork/_example/pipelines/train.py",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel hatchling builds from this repository (as `pip wheel .` would)."""
    pytest.importorskip("hatchling", reason="hatchling is in the dev extra")
    from hatchling.builders.wheel import WheelBuilder

    out = tmp_path_factory.mktemp("dist")
    built = list(WheelBuilder(str(REPO_ROOT)).build(directory=str(out), versions=["standard"]))
    assert len(built) == 1
    return Path(built[0])


def example_files(root: Path) -> list[str]:
    """The example's files under `root` (conf/, pipelines/, dvc.yaml), relative, sorted."""
    files = []
    for name in EXAMPLE_FILES:
        path = root / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            str(p.relative_to(root)) for p in candidates
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    return sorted(files)


def test_wheel_contains_the_example_project(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for name in EXAMPLE_IN_WHEEL:
        assert name in names
    # every file of the checkout's example, and nothing else under _example/
    packaged = sorted(n.removeprefix("mlfork/_example/") for n in names
                      if n.startswith("mlfork/_example/"))
    assert packaged == example_files(REPO_ROOT)
    # the PyTorch example too (`mlfork init --example torch` from an installed wheel)
    torch_packaged = sorted(n.removeprefix("mlfork/_examples/torch/") for n in names
                            if n.startswith("mlfork/_examples/torch/"))
    assert torch_packaged == example_files(REPO_ROOT / "examples" / "torch")
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "mlfork/__init__.py" in names and "mlfork/py.typed" in names


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    assert parser["console_scripts"]["mlfork"].strip() == "mlfork.cli:main"
    import mlfork.cli

    assert callable(mlfork.cli.main)


def test_example_dir_in_a_source_checkout() -> None:
    found = example_dir()
    assert found.resolve() == REPO_ROOT.resolve()
    for name in ("conf/config.yaml", "dvc.yaml", "pipelines/train.py"):
        assert (found / name).is_file()


def test_init_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """Installed from the wheel (no checkout around it), `mlfork init` copies the packaged
    example: the project it makes holds the same files as the wheel."""
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(wheel)],
        capture_output=True, text=True, check=False,
    )
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c",
         "import mlfork; from mlfork.ops.kernel.init import example_dir;"
         " print(mlfork.__file__); print(example_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, found = probe.stdout.splitlines()
    assert Path(module_file).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(found) == site / "mlfork" / "_example"
    made = subprocess.run(
        [sys.executable, "-m", "mlfork", "init", "digits", "--example", "torch", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert made.returncode == 0, made.stderr
    assert example_files(tmp_path / "digits") == example_files(
        site / "mlfork" / "_examples" / "torch")

    proc = subprocess.run(
        [sys.executable, "-m", "mlfork", "init", "demo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    demo = tmp_path / "demo"
    assert example_files(demo) == example_files(site / "mlfork" / "_example")
    for name in example_files(demo):
        made = (demo / name).read_bytes()
        shipped = (site / "mlfork" / "_example" / name).read_bytes()
        if name == "conf/config.yaml":  # the one change: the experiment named after the project
            assert made == shipped.replace(b"mlfork:\n", b'mlfork:\n  experiment: "demo"\n', 1)
        else:
            assert made == shipped
    tracked = git(demo, "ls-files").split()
    assert {"conf/config.yaml", "dvc.yaml", "pipelines/train.py", "params.yaml"} <= set(tracked)
    assert git(demo, "status", "--porcelain") == ""


def test_the_python_api_is_the_typed_operations_imported_on_first_use() -> None:
    """`mlfork.X` is the operation itself (its signature, its docstring), loaded lazily;
    every public name resolves and `__all__` lists exactly the operations."""
    code = (
        "import sys, inspect, mlfork\n"
        "assert not any(m.startswith('mlfork.ops') for m in sys.modules), 'eager import'\n"
        "from mlfork.ops.running.start import start\n"
        "from mlfork.ops.replaying.plan import plan\n"
        "assert mlfork.run is start and mlfork.replay is plan\n"
        "for name in mlfork.__all__:\n"
        "    value = getattr(mlfork, name)\n"
        "    if callable(value) and name != 'MlforkError':\n"
        "        params = inspect.signature(value).parameters\n"
        "        assert next(iter(params)) == 'path', name\n"
        "        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), name\n"
        "        assert value.__doc__, name\n"
        "try:\n"
        "    mlfork.nothing\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('mlfork.nothing resolved')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
