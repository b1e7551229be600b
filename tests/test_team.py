"""Two people, one project: a bare git remote, a DVC remote (a local folder, or an S3 bucket
on moto's S3-compatible server on 127.0.0.1) and a real `mlflow server` on 127.0.0.1. Alice
runs and pushes; Bob clones into a folder of another name, sees her run, forks it (fetching
only the fork point's objects), runs and pushes; Alice pulls and sees his fork. The server
holds one experiment, Bob's fork nested under Alice's run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_project, git

from mlfork import testing
from mlfork.ops.mirroring.ui import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.xdist_group("mlflow-server")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("team-server")
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
            f"sqlite:///{folder}/team.db", "--default-artifact-root",
            (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port",
            url.rsplit(":", 1)[1], "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with testing.serving(argv, url, folder / "server.log", env=env):
        yield url


BUCKET = "team-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1, with the team's bucket."""
    import boto3

    folder = tmp_path_factory.mktemp("s3-server")
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
            url.rsplit(":", 1)[1]]
    with testing.serving(argv, url, folder / "moto.log", health="/moto-api/"):
        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="team", aws_secret_access_key="secret",
                     ).create_bucket(Bucket=BUCKET)
        yield url


def bucket_objects(url: str) -> set[str]:
    """The md5s of the DVC objects in the team's bucket (`dvc/files/md5/ab/cdef...`)."""
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="team", aws_secret_access_key="secret")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="dvc/") for o in page.get("Contents", [])]
    return {"".join(k.split("/")[-2:]) for k in keys if "/files/md5/" in k}


def s3_remote(who: dict[str, str], root: Path, url: str) -> None:
    """What each teammate keeps out of git: the endpoint and credentials of the S3 store."""
    for key, value in (("endpointurl", url), ("access_key_id", "team"),
                       ("secret_access_key", "secret"), ("region", "us-east-1")):
        sh(who, root, "dvc", "remote", "modify", "--local", "store", key, value)


def person(tmp: Path, name: str, url: str) -> dict[str, str]:
    """A teammate's environment: their own HOME and git identity, the shared server."""
    env = testing.isolated_env(tmp / f"home-{name.lower()}", name=name,
                               email=f"{name.lower()}@team.invalid")
    env["MLFLOW_TRACKING_URI"] = url
    return env


def as_(who: dict[str, str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mlfork ARGS` as that person (their environment replaces the test's)."""
    done = subprocess.run([sys.executable, "-m", "mlfork", *args], cwd=root, env=who,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, f"mlfork {' '.join(args)}: {done.stderr}"
    return done


def sh(who: dict[str, str], root: Path, *args: str) -> str:
    done = subprocess.run(list(args), cwd=root, env=who, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def cache_objects(root: Path) -> set[str]:
    files = root / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name for p in files.rglob("*") if p.is_file()} \
        if files.is_dir() else set()


def lock_objects(root: Path, rev: str) -> set[str]:
    """The md5s of the outputs the dvc.lock and .dvc files of `rev` record that git does not
    track (a folder: its listing and its files)."""
    import yaml

    out: set[str] = set()
    texts = [git(root, "show", f"{rev}:dvc.lock")]
    tracked = set(git(root, "ls-tree", "-r", "--name-only", rev).split())
    for path in tracked:
        if path.endswith(".dvc"):
            texts.append(git(root, "show", f"{rev}:{path}"))
    for text in texts:
        data = yaml.safe_load(text) or {}
        entries = list(data.get("outs") or [])
        for stage in (data.get("stages") or {}).values():
            entries += list(stage.get("outs") or [])
        for entry in entries:
            if entry.get("md5") and entry.get("path") not in tracked:  # git has the rest
                md5 = str(entry["md5"])
                out.add(md5)
                if md5.endswith(".dir"):
                    listing = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
                    if listing.is_file():
                        out |= {f["md5"] for f in json.loads(listing.read_text())}
    return out


def experiment_name(url: str, experiment_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient(tracking_uri=url).get_experiment(experiment_id).name)


def mlflow_runs(url: str, experiment: str | None = None) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exps = [e for e in client.search_experiments()
            if experiment is None or e.name == experiment]
    runs = client.search_runs([e.experiment_id for e in exps], max_results=1000)
    return [{"id": r.info.run_id, "experiment": r.info.experiment_id, "tags": r.data.tags,
             "history": sorted((m.step, m.value) for m in
                               client.get_metric_history(r.info.run_id, "accuracy"))}
            for r in runs]


@pytest.mark.parametrize("storage", ["folder", "s3"])
def test_two_people_share_runs_through_git_dvc_and_one_server(
    tmp_path: Path, template: Path, server: str, storage: str,
    request: pytest.FixtureRequest,
) -> None:
    """With S3, the DVC remote is added after Alice's run (the checkpoints' commits do not
    name it) and its endpoint and keys are in each clone's `.dvc/config.local`: a per-commit
    `dvc push --all-commits`/`--rev` reads each commit's config there, and skipped those
    commits' objects ("failed to collect"); mlfork pushes every object with the
    workspace's remote."""
    remote = tmp_path / "team.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    alice = person(tmp_path, "Alice", server)
    bob = person(tmp_path, "Bob", server)

    # Alice: her project, the remotes, a run, a push
    mine = copy_project(template, tmp_path / "alice" / "proj")
    sh(alice, mine, "git", "remote", "add", "origin", str(remote))
    # the team's experiment, named in the policy (each variant its own on the shared server)
    conf = mine / "conf" / "config.yaml"
    text, n = re.subn(r"(?m)^  experiment: .*$", f'  experiment: "team-{storage}"',
                      conf.read_text())
    assert n == 1
    conf.write_text(text)
    sh(alice, mine, "git", "commit", "-qam", "the team's MLflow experiment")
    if storage == "folder":
        sh(alice, mine, "dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store"))
        sh(alice, mine, "git", "commit", "-qam", "the team's DVC remote")
        as_(alice, mine, "run", "--name", "base", "--iterations", "3", "--wait")
    else:
        url = request.getfixturevalue("s3")
        as_(alice, mine, "run", "--name", "base", "--iterations", "3", "--wait")
        sh(alice, mine, "git", "switch", "-q", "main")
        sh(alice, mine, "dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")
        s3_remote(alice, mine, url)
        sh(alice, mine, "git", "commit", "-qam", "the team's DVC remote")
    sh(alice, mine, "git", "push", "-q", "origin", "main")
    pushed = json.loads(as_(alice, mine, "push", "--json").stdout)
    assert pushed["pushed"] == ["base"] and pushed["objects"] > 0
    again = json.loads(as_(alice, mine, "push", "--json").stdout)
    assert again["up_to_date"] == ["base"] and again["objects"] == 0  # incremental
    if storage == "s3":  # every object of every checkpoint is in the bucket
        checkpoints = git(mine, "log", "--format=%H", "--grep", "Mlfork-Step:",
                          "mlfork/base").split()
        wanted = set().union(*(lock_objects(mine, rev) for rev in checkpoints))
        assert wanted and wanted <= bucket_objects(url), wanted - bucket_objects(url)

    # Bob: a clone in a folder of another name, an empty cache
    theirs = tmp_path / "bob" / "remote"
    sh(bob, tmp_path, "git", "clone", "-q", str(remote), str(theirs))
    if storage == "s3":
        s3_remote(bob, theirs, url)
    as_(bob, theirs, "init")
    listed = json.loads(as_(bob, theirs, "runs", "--json").stdout)
    assert [(r["name"], r["remote"]) for r in listed] == [("base", "origin")]
    assert cache_objects(theirs) == set()
    fork_point = git(theirs, "log", "--format=%H", "--grep", "Mlfork-Iteration: 1",
                     "--grep", "Mlfork-Step: evaluate", "--all-match",
                     "origin/mlfork/base").split()[0]
    as_(bob, theirs, "branch", "--from", "base", "--from-iteration", "1", "--name", "lr",
        "model.lr=0.05", "--wait")
    # exactly the fork point's objects were fetched: none of the other iterations'
    assert cache_objects(theirs) == lock_objects(mine, fork_point)
    as_(bob, theirs, "resume", "--wait")
    bob_pushed = json.loads(as_(bob, theirs, "push", "lr", "--json").stdout)
    assert bob_pushed["pushed"] == ["lr"]

    # Alice pulls: Bob's fork is hers to see
    pulled = json.loads(as_(alice, mine, "pull", "--json").stdout)
    assert pulled["created"] == ["lr"] and pulled["current"] == ["base"]
    runs = {r["name"]: r for r in json.loads(as_(alice, mine, "runs", "--json").stdout)}
    assert runs["lr"]["parent"]["run"] == "base" and runs["lr"]["status"] == "completed"
    assert "lr" in as_(alice, mine, "tree").stdout
    as_(alice, mine, "report", "lr", "-o", str(tmp_path / "report.md"))
    assert "model.lr=0.05" in (tmp_path / "report.md").read_text()

    # both sync: one experiment, one MLflow run each, Bob's nested under Alice's, his name
    as_(alice, mine, "sync")
    as_(bob, theirs, "sync")
    found = mlflow_runs(server, f"team-{storage}")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in found:
        by_name.setdefault(r["tags"]["mlfork.run"], []).append(r)
    assert sorted(by_name) == ["base", "lr"]
    assert all(len(v) == 1 for v in by_name.values()), "no duplicate runs"
    (base,), (lr,) = by_name["base"], by_name["lr"]
    assert base["experiment"] == lr["experiment"]
    assert experiment_name(server, base["experiment"]) == f"team-{storage}"
    assert lr["tags"]["mlflow.parentRunId"] == base["id"]
    assert lr["tags"]["mlflow.user"] == "Bob" and base["tags"]["mlflow.user"] == "Alice"
    assert [step for step, _ in lr["history"]] == [0, 1, 2]  # one continuous curve
    assert lr["history"][:2] == base["history"][:2]  # inherited points are the parent's
