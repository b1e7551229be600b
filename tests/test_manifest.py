"""Replay manifests: `.mlfork/replay.json`, committed with every iteration (DESIGN.md section 7).

The fields are read back with the git CLI from real runs and checked against independent
readers: `params.yaml` and `dvc.lock` at the same commit, `importlib.metadata` parsed the slow
way, `sha256sum`, DVC's own index. No environment variable value may land in any committed
object: a run is made with a secret in the environment and in the tracking URI's
credentials, and every object of the repository is searched for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, copy_project, dvc, git

import mlfork
from mlfork.errors import MalformedFile
from mlfork.models import RunRecord
from mlfork.ops.replaying import datasets, fingerprint, manifest

MANIFEST = ".mlfork/replay.json"
STAGES = ["data_split", "train", "evaluate"]
KEY_PACKAGES = ["dvc", "pygit2", "hydra-core", "omegaconf", "mlflow", "pandas", "numpy",
                "scikit-learn", "torch"]
TRAILERS = (
    "%H%x09%(trailers:key=Mlfork-Run,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Iteration,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Step,valueonly,separator=%x2C)"
)
SECRET = "sk-live-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"
URI_SECRET = "tok-9d8c7b6a5f4e3d2c1b0a"


def ends(root: Path, run: str) -> dict[int, str]:
    """iteration -> the end-of-iteration commit of `run`'s own iterations (git CLI)."""
    out = git(root, "log", "--first-parent", f"--format={TRAILERS}", f"mlfork/{run}")
    found: dict[int, str] = {}
    for line in out.splitlines():
        sha, owner, iteration, step = (part.strip() for part in line.split("\t"))
        if owner == run and step == STAGES[-1]:
            found.setdefault(int(iteration), sha)
    return found


def show(root: Path, rev: str, path: str) -> str:
    return git(root, "show", f"{rev}:{path}")


def independent_environment() -> tuple[dict[str, str], str, int]:
    """(key package versions, hash, count) from importlib.metadata, parsing every METADATA."""
    canon = {}
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        canon.setdefault(name, dist.version)
    lines = sorted(f"{n}=={v}" for n, v in canon.items())
    keys = {n: canon[n] for n in KEY_PACKAGES if n in canon}
    return keys, hashlib.sha256("\n".join(lines).encode()).hexdigest(), len(lines)


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """A 2-iteration CLI run made with a secret-looking environment variable set and an
    (unreachable) tracking server whose URI carries a token as its password."""
    root = copy_project(template, tmp_path_factory.mktemp("secret") / "proj")
    proc = cli(root, "run", "--name", "s", "--iterations", "2", "model.lr=0.1", env={
        "MLFORK_TEST_SECRET": SECRET,
        "MLFLOW_TRACKING_URI": f"http://mlfork:{URI_SECRET}@127.0.0.1:9/mlflow?token={SECRET}",
    })
    assert proc.returncode == 0, proc.stderr
    assert "outbox" in proc.stderr  # the store is down: the writes wait, the run goes on
    return root


def test_manifest_fields_on_a_real_run(secret_run: Path) -> None:
    root = secret_run
    commits = ends(root, "s")
    assert sorted(commits) == [0, 1]
    keys, packages_hash, count = independent_environment()
    main = git(root, "rev-parse", "main").strip()
    for i, sha in commits.items():
        text = show(root, sha, MANIFEST)
        m = json.loads(text)
        assert m["manifest_version"] == 1
        # identity
        assert (m["run"], m["iteration"], m["parent"]) == ("s", i, None)
        assert datetime.fromisoformat(m["created"]).tzinfo is not None
        # the literal argv and the cumulative overrides
        argv = ["mlfork", "run", "--name", "s", "--iterations", "2", "model.lr=0.1"]
        assert m["argv"] == argv and m["run_argv"] == argv
        assert m["overrides"] == m["own_overrides"] == ["model.lr=0.1"]
        # the composed config is the committed params.yaml
        params = yaml.safe_load(show(root, sha, "params.yaml"))
        assert m["config"] == params and params["iteration"] == i
        assert m["config"]["model"]["lr"] == 0.1
        # the seed bundle
        assert m["seed"]["config_seed"] == 42
        assert m["seed"]["PYTHONHASHSEED"] == "42"
        assert m["seed"]["config_seeds"] == {"seed": 42}
        assert "pipeline" not in m["seed"]  # what a stage seeds is not mlfork's to claim
        # dataset identity: the hashes DVC holds in dvc.lock at the same commit
        lock = yaml.safe_load(show(root, sha, "dvc.lock"))
        outs = {o["path"]: o for st in lock["stages"].values() for o in st.get("outs", [])}
        assert set(m["datasets"]) == {"data/train.npz", "data/val.npz"}  # not the checkpoints
        for path, entry in m["datasets"].items():
            assert entry == {"source": "dvc", "md5": outs[path]["md5"], "size": outs[path]["size"]}
        # the environment fingerprint, against importlib.metadata read the slow way
        env = m["environment"]
        assert env["python"] == platform.python_version()
        assert env["implementation"] == platform.python_implementation()
        assert env["platform"] == f"{sys.platform}-{platform.machine()}"
        assert env["mlfork"] == mlfork.__version__
        assert env["packages"] == keys
        assert ("torch" in env["packages"]) == ("torch" in keys)
        assert {"dvc", "pygit2", "hydra-core", "omegaconf", "mlflow", "numpy"} <= set(keys)
        assert (env["packages_hash"], env["packages_count"]) == (packages_hash, count)
        # the code: the commit the iteration's last stage ran on, and the run's base
        assert m["code_commit"] == git(root, "rev-parse", f"{sha}^").strip()
        assert m["base_commit"] == main
        # the tracking server, without its credentials, query or token
        assert m["tracking"] == "http://127.0.0.1:9/mlflow"
        assert str(root) not in text and os.path.expanduser("~") not in text
        assert list(m) == sorted(m)  # sorted keys


def test_no_environment_value_in_any_committed_object(secret_run: Path) -> None:
    root = secret_run
    everything = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=root, capture_output=True,
        check=True,
    ).stdout
    assert len(everything) > 10_000 and b"replay.json" in everything  # the trees list it
    for secret in (SECRET, URI_SECRET):
        assert secret.encode() not in everything
        for rev in git(root, "rev-list", "--all").split():
            assert git(root, "grep", "-I", "-c", secret, rev, check=False) == ""
    # nor in what DVC would push to a remote
    for path in (root / ".dvc" / "cache").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and URI_SECRET.encode() not in data


def test_a_fork_manifest_names_its_parent_and_fork_point(base_project: Path) -> None:
    root = base_project
    mlfork.branch(path=str(root), source="base", from_iteration=1, name="f",
                  overrides=["model.lr=0.05"], run=True)
    fork_point = ends(root, "base")[1]
    (sha,) = ends(root, "f").values()
    m = json.loads(show(root, sha, MANIFEST))
    assert (m["run"], m["iteration"]) == ("f", 2)
    assert m["parent"] == {"run": "base", "iteration": 1, "step": "evaluate", "commit": fork_point}
    assert m["own_overrides"] == ["model.lr=0.05"] and m["overrides"] == ["model.lr=0.05"]
    assert m["config"]["model"]["lr"] == 0.05
    # the iteration the fork inherited keeps its owner's manifest
    assert json.loads(show(root, "mlfork/f~4", MANIFEST))["run"] == "base"


def test_a_file_a_locked_key_names_is_hashed_with_its_size(project: Path) -> None:
    root = project
    with open(root / ".gitignore", "a") as fh:
        fh.write("/raw/\n")
    git(root, "commit", "-q", "-am", "raw data stays outside git")
    (root / "raw").mkdir()
    data = os.urandom(3 << 20) + b"tail"  # crosses the 1 MiB chunks
    (root / "raw" / "data.csv").write_bytes(data)
    proc = cli(root, "run", "--name", "r", "--iterations", "1", "+dataset.path=raw/data.csv")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(show(root, "mlfork/r", MANIFEST))
    assert m["datasets"]["raw/data.csv"] == {
        "source": "sha256",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "key": "dataset.path",
    }


# -- loading -------------------------------------------------------------------------------------


def minimal(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "manifest_version": 1, "run": "base", "iteration": 0, "config": {"seed": 1},
        "seed": {"PYTHONHASHSEED": "1"}, "environment": {}, "datasets": {},
    }
    doc.update(changes)
    return doc


def test_a_newer_manifest_loads_with_a_warning_and_serves_seed_and_config() -> None:
    doc = {"manifest_version": 7, "config": {"seed": 3, "model": {"lr": 0.5}},
           "seed": {"PYTHONHASHSEED": "3"}, "environment": "a new shape", "hologram": [1]}
    loaded = manifest.load(json.dumps(doc))
    assert loaded.newer
    assert len(loaded.warnings) == 1 and "manifest_version 7" in loaded.warnings[0]
    assert "upgrade mlfork" in loaded.warnings[0]
    assert loaded.config == {"seed": 3, "model": {"lr": 0.5}}
    assert loaded.seed == {"PYTHONHASHSEED": "3"}
    assert manifest.load(json.dumps(minimal())).warnings == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "manifest_version"),
        (json.dumps({"config": {}, "seed": {}}), "manifest_version"),
        (json.dumps(minimal(manifest_version="1")), "manifest_version"),
        (json.dumps(minimal(manifest_version=0)), "does not exist"),
        (json.dumps(minimal(config=[1])), "'config' and 'seed'"),
        (json.dumps(minimal(seed=None)), "'config' and 'seed'"),
        (json.dumps(minimal(run=3)), "'run'"),
        (json.dumps(minimal(environment=None)), "'environment'"),
        (json.dumps(minimal(datasets={"a": {"source": "ftp"}})), "'datasets'"),
    ],
)
def test_a_malformed_manifest_is_a_clear_error(text: str, reason: str) -> None:
    with pytest.raises(MalformedFile, match=re.escape(reason)) as err:
        manifest.load(text, "replay.json at abc")
    assert err.value.exit_code == 14
    assert str(err.value).startswith("replay.json at abc is malformed")


# -- the environment diff ------------------------------------------------------------------------


def test_the_environment_diff_has_one_line_per_differing_field() -> None:
    current = fingerprint.environment()
    recorded = json.loads(json.dumps(current))
    assert fingerprint.diff_environment(recorded) == []
    recorded["python"] = "2.7.18"
    recorded["packages"]["mlflow"] = "0.0.1"
    recorded["packages"]["torch"] = "1.0.0"
    recorded["packages_hash"] = "0" * 64
    lines = [c.line() for c in fingerprint.diff_environment(recorded)]
    assert lines == [
        f"python: '2.7.18' -> '{current['python']}'",
        f"packages.mlflow: '0.0.1' -> '{current['packages']['mlflow']}'",
        "packages.torch: '1.0.0' -> "
        + (f"'{current['packages']['torch']}'" if "torch" in current["packages"] else "absent"),
        f"packages_hash: '000000000000' -> '{current['packages_hash'][:12]}'",
    ]


def test_forking_or_resuming_in_another_environment_warns_with_the_diff(
    base_project: Path,
) -> None:
    root = base_project
    path = root / MANIFEST
    m = json.loads(path.read_text())
    m["environment"]["python"] = "2.7.18"
    m["environment"]["packages"]["mlflow"] = "0.0.1"
    path.write_text(json.dumps(m))
    git(root, "commit", "-q", "--amend", "--no-edit", MANIFEST)  # the trailers stay
    mlflow_now = fingerprint.environment()["packages"]["mlflow"]
    expected = [
        f"python: '2.7.18' -> '{platform.python_version()}'",
        f"packages.mlflow: '0.0.1' -> '{mlflow_now}'",
    ]
    fork = cli(root, "branch", "--from", "base", "--from-iteration", "2", "--name", "f",
               "--iterations", "0")
    assert fork.returncode == 0, fork.stderr
    resume = cli(root, "resume", "f")
    assert resume.returncode == 0, resume.stderr
    for proc in (fork, resume):
        warnings = [ln for ln in proc.stderr.splitlines() if "environment differs" in ln]
        assert len(warnings) == 2, proc.stderr
        for line, field in zip(warnings, expected, strict=True):
            assert line.startswith("mlfork: warning: ") and line.endswith(field)
            assert "base iteration 2" in line
    # the same machine as the manifest: no warning
    proc = cli(root, "branch", "--from", "base", "--from-iteration", "1", "--name", "g",
               "--no-switch")
    assert proc.returncode == 0 and "warning" not in proc.stderr


# -- secrets, hashing, DVC data ------------------------------------------------------------------


def test_secrets_and_credentials_never_reach_a_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "mlfork tests")  # not a secret: kept
    rec = RunRecord(name="x", iterations=1, argv=["mlfork", "run", "+key=hf_abcdefghijklmnop"])
    doc = manifest.build(
        rec=rec, iteration=0, argv=rec.argv, pythonhashseed="0",
        config={"token": "${oc.env:HF_TOKEN} gave hf_abcdefghijklmnop", "author": "mlfork tests",
                "store": "s3://AKIA:secret@bucket/data"},
        data={}, code_commit="c", tracking="https://me:pw@host:5000/x?token=t#f", created="now",
    )
    text = manifest.dumps(doc)
    assert "hf_abcdefghijklmnop" not in text and "pw@" not in text and "AKIA" not in text
    assert doc["config"]["author"] == "mlfork tests"
    assert doc["config"]["store"] == "s3://bucket/data"
    assert doc["tracking"] == "https://host:5000/x"
    assert manifest.safe_tracking("sqlite:////home/me/mlflow.db") == "sqlite:(a local path)"
    assert manifest.safe_tracking("embedded") == "embedded"
    assert manifest.safe_tracking("databricks") == "databricks"


def test_sha256_streams_like_sha256sum(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom((2 << 20) + 12345))
    expected = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0]
    assert datasets.sha256_file(path) == expected
    cache = datasets.HashCache(tmp_path / "hashes.json")
    assert cache.sha256(path, "k") == (expected, path.stat().st_size)
    data = bytearray(path.read_bytes())
    data[1000] ^= 1  # one byte, same size
    path.write_bytes(bytes(data))
    assert cache.sha256(path, "k")[0] == hashlib.sha256(data).hexdigest() != expected
    reloaded = datasets.HashCache(tmp_path / "hashes.json")
    assert reloaded.entries["k"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_dvc_data_sources_agree_with_dvc_without_reading_data(project: Path) -> None:
    from mlfork.adapters.dvc import DvcProject

    root = project
    (root / "raw" / "images").mkdir(parents=True)
    for i in range(3):
        (root / "raw" / "images" / f"{i}.bin").write_bytes(os.urandom(1000 + i))
    (root / "raw" / "labels.csv").write_text("a,b\n1,2\n")
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "deep" / "x.bin").write_bytes(b"x" * 10)
    for target in ("raw/images", "raw/labels.csv", "sub/deep/x.bin"):
        proc = dvc(root, "add", "-q", target)
        assert proc.returncode == 0, proc.stderr
    def sources() -> dict:
        with DvcProject(root) as project_dvc:
            return datasets.sources_of(project_dvc.pipeline())

    ours = sources()
    theirs = {}  # the .dvc files, read as plain YAML (an independent reader)
    for dvcfile in root.rglob("*.dvc"):
        if ".dvc" in dvcfile.relative_to(root).parts[:1]:
            continue
        (out,) = yaml.safe_load(dvcfile.read_text())["outs"]
        rel = (dvcfile.parent / out["path"]).relative_to(root).as_posix()
        theirs[rel] = out
    assert set(ours) == set(theirs) == {"models/resume", "raw/images", "raw/labels.csv",
                                        "sub/deep/x.bin"}
    for path in theirs:
        assert ours[path]["md5"] == theirs[path]["md5"]
        assert ours[path]["size"] == theirs[path]["size"]
    assert ours["raw/images"]["md5"].endswith(".dir") and ours["raw/images"]["nfiles"] == 3
    # the data is never read: other bytes in the workspace change nothing
    for path in [*(root / "raw" / "images").iterdir(), root / "raw" / "labels.csv"]:
        size = path.stat().st_size
        path.unlink()  # a link into the DVC cache: replace it, do not write through it
        path.write_bytes(os.urandom(size))
    assert sources() == ours
