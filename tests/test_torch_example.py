"""The PyTorch example (`mlfork init --example torch`), end to end through the real CLI: a
fork without overrides reproduces its parent bit for bit (`verify`), a fork with another
learning rate diverges from its fork point on, a fork of a fork reads its per-step curve
from its grandparent, its parent and itself with no gap or duplicate, and `mlfork merge`
averages two forks' checkpoints into a run whose first commit is a merge commit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli, git, ok, snapshot

from mlfork import state

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torch-example")]

STEPS = 86  # 1347 training digits in batches of 32: 43 steps an epoch, 2 epochs an iteration


def jcli(root: Path, *args: str) -> object:
    return json.loads(ok(cli(root, *args, "--json")).stdout)


def own(root: Path, run: str, metric: str = "train/loss") -> list[tuple[int, float]]:
    rows = jcli(root, "metrics", run, "--x", "step", "--own", "--metric", metric)
    assert isinstance(rows, list)
    return [(r["step"], r["value"]) for r in rows]


def checkpoint(root: Path, commit: str) -> Path:
    """The cache file of the checkpoint output dvc.lock names at `commit`."""
    lock = yaml.safe_load(git(root, "show", f"{commit}:dvc.lock"))
    out = next(o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/checkpoint")
    md5 = out["md5"]
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def model_arrays(path: Path) -> dict[str, np.ndarray]:
    tree, arrays = state.read_raw(path)
    return {name: arrays[ref["__tensor__"]] for name, ref in state.leaves(tree["objects"]["model"])}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base (2 iterations); a (lr 0.01) and b (lr 0.001) forked from base after iteration 0;
    c (lr 0.005) forked from a after iteration 1, one iteration."""
    root = tmp_path_factory.mktemp("torch") / "digits"
    made = jcli(root.parent, "init", str(root), "--example", "torch")
    assert isinstance(made, dict) and made["notes"] == []  # torch, dvclive, sklearn installed
    ok(cli(root, "run", "--name", "base", "--iterations", "2"))
    for name, lr in (("a", "0.01"), ("b", "0.001")):
        ok(cli(root, "branch", "--from", "base", "--from-iteration", "0", "--name", name,
               f"train.lr={lr}", "--run"))
    ok(cli(root, "branch", "--from", "a", "--from-iteration", "1", "--name", "c",
           "--iterations", "1", "train.lr=0.005", "--run"))
    return root


@pytest.fixture(scope="module")
def mismatched(project: Path) -> Path:
    """Two more root runs: `narrow` (a hidden layer of 32: other shapes) and `split`
    (another test_size: a locked key differs)."""
    for name, override in (("narrow", "model.hidden=32"), ("split", "dataset.test_size=0.3")):
        git(project, "switch", "-q", "main")
        ok(cli(project, "run", "--name", name, "--iterations", "1", override))
    git(project, "switch", "-q", "main")
    return project


def test_verify_reproduces_the_run_bit_for_bit(project: Path) -> None:
    proc = ok(cli(project, "verify", "base", "--from-iteration", "0"))
    assert "identical" in proc.stdout and "bit for bit" in proc.stdout


def test_a_fork_with_another_learning_rate_diverges_from_its_fork_point(project: Path) -> None:
    base, a = own(project, "base"), own(project, "a")
    assert [s for s, _ in base] == list(range(2 * STEPS))
    assert [s for s, _ in a] == list(range(STEPS, 2 * STEPS))  # its first step follows base's
    # the first batch after the fork sees the same weights and data: its loss is base's;
    # from the first update with the other learning rate on, the curves part
    assert a[0] == base[STEPS]
    assert all(x != y for (_, x), (_, y) in zip(a[1:6], base[STEPS + 1:STEPS + 6], strict=True))
    stitched = jcli(project, "metrics", "a", "--x", "step", "--metric", "train/loss")
    assert isinstance(stitched, list)
    inherited = [(r["step"], r["value"]) for r in stitched if r["inherited"]]
    assert inherited == base[:STEPS]  # exactly the parent's points up to the fork


def test_a_fork_of_a_fork_stitches_three_runs_on_one_axis(project: Path) -> None:
    for source in ("git", "tracking"):
        rows = jcli(project, "metrics", "c", "--x", "step", "--metric", "train/loss",
                    "--source", source)
        assert isinstance(rows, list)
        steps = [r["step"] for r in rows]
        assert steps == list(range(3 * STEPS)), source  # no gap, no duplicate
        owners = [r["owner"] for r in rows]
        assert owners == ["base"] * STEPS + ["a"] * STEPS + ["c"] * STEPS
        values = [(r["step"], r["value"]) for r in rows]
        assert values[:STEPS] == own(project, "base")[:STEPS]
        assert values[STEPS:2 * STEPS] == own(project, "a")
        assert values[2 * STEPS:] == own(project, "c")


def test_merge_averages_two_forks_tensor_by_tensor(project: Path) -> None:
    before = git(project, "rev-parse", "HEAD")
    result = jcli(project, "merge", "a", "b", "--name", "soup")
    assert isinstance(result, dict)
    assert [(s["run"], s["iteration"], s["weight"]) for s in result["sources"]] == [
        ("a", 1, 0.5), ("b", 1, 0.5)]
    first = result["commit"]
    parents = git(project, "rev-list", "--parents", "-n", "1", first).split()[1:]
    tips = [git(project, "rev-parse", f"mlfork/{r}").strip() for r in ("a", "b")]
    assert parents == tips  # a merge commit of both checkpoints
    assert git(project, "rev-parse", "HEAD") == before  # the workspace stays where it was
    merged = model_arrays(checkpoint(project, first))
    sa, sb = model_arrays(checkpoint(project, tips[0])), model_arrays(checkpoint(project, tips[1]))
    assert sorted(merged) == sorted(sa) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    assert sorted(result["averaged"]) == sorted(merged)
    for name, tensor in merged.items():
        mean = ((sa[name].astype(np.float64) + sb[name].astype(np.float64)) / 2).astype(np.float32)
        assert tensor.dtype == np.float32 and np.array_equal(tensor, mean), name
        assert not np.array_equal(tensor, sa[name])
    tree = jcli(project, "tree")
    assert isinstance(tree, list)
    nodes = {n["name"]: n for root in tree for n in _walk(root)}
    assert nodes["soup"]["merged"] == ["a@1", "b@1"] and nodes["soup"]["parent"] == "a"
    # no metric of its own yet (the metrics files are a's): none shown, not a's as the soup's
    assert nodes["soup"]["headline_value"] is None and nodes["a"]["headline_value"] is not None
    runs = {r["name"]: r for r in jcli(project, "runs")}  # type: ignore[union-attr]
    assert runs["soup"]["headline_value"] is None
    # it trains on from the soup
    ok(cli(project, "resume", "soup", "--iterations", "1"))
    runs = {r["name"]: r for r in jcli(project, "runs")}  # type: ignore[union-attr]
    assert runs["soup"]["status"] == "completed" and runs["soup"]["done"] == 3
    assert runs["soup"]["headline_value"] is not None
    # its MLflow run names its sources and weights
    from mlflow.tracking import MlflowClient

    from mlfork.adapters.tracking.store import default_uri

    ok(cli(project, "sync"))
    client = MlflowClient(default_uri(project))
    (soup,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 "tags.`mlfork.run` = 'soup'")
    assert json.loads(soup.data.tags["mlfork.merged_from"]) == [
        {"run": "a", "iteration": 1, "weight": 0.5}, {"run": "b", "iteration": 1, "weight": 0.5}]
    assert "Merged (mean" in soup.data.tags["mlflow.note.content"]


def _walk(node: dict[str, object]) -> list[dict[str, object]]:
    out = [node]
    for child in node["children"]:  # type: ignore[attr-defined]
        out += _walk(child)
    return out


def test_merge_refuses_mismatches_with_nothing_written(mismatched: Path) -> None:
    project = mismatched
    before = snapshot(project)
    shape = cli(project, "merge", "a", "narrow", "--name", "bad")
    assert shape.returncode == 20, shape.stderr
    assert "'0.weight'" in shape.stderr and "(64, 64)" in shape.stderr
    assert "(32, 64)" in shape.stderr and "Traceback" not in shape.stderr
    locked = cli(project, "merge", "a", "split", "--name", "bad")
    assert locked.returncode == 20 and "locked key 'dataset.test_size'" in locked.stderr
    weights = cli(project, "merge", "a", "b", "--strategy", "weighted", "--weights", "1",
                  "--name", "bad")
    assert weights.returncode == 2 and "one per run" in weights.stderr
    once = cli(project, "merge", "a", "a", "--name", "bad")
    assert once.returncode == 2
    assert snapshot(project) == before


def test_merge_compares_locked_keys_of_other_params_files(tmp_path: Path) -> None:
    """A locked key of a second params file, in DVC's grammar (`data.yaml:source`), is
    compared as the keys of params.yaml are: runs on other data are not merged."""
    root = tmp_path / "digits"
    ok(cli(tmp_path, "init", str(root), "--example", "torch"))
    (root / "data.yaml").write_text("source: digits-a\n")
    config = root / "conf" / "config.yaml"
    text = config.read_text()
    assert "locked: [dataset, val_metric]" in text
    config.write_text(text.replace("locked: [dataset, val_metric]",
                                   "locked: [dataset, val_metric, 'data.yaml:source']"))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the data's source, locked")
    ok(cli(root, "run", "--name", "x", "--iterations", "1"))
    git(root, "switch", "-q", "main")
    ok(cli(root, "run", "--name", "y", "--iterations", "1", "data.yaml:source=digits-b"))
    git(root, "switch", "-q", "main")
    before = snapshot(root)
    refused = cli(root, "merge", "x", "y", "--name", "bad")
    assert refused.returncode == 20, refused.stderr
    assert "locked key 'data.yaml:source' differs: 'digits-a' in x@0, 'digits-b' in y@0" \
        in refused.stderr
    assert snapshot(root) == before


def cache_files(root: Path) -> set[str]:
    cache = root / ".dvc" / "cache"
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}


def test_merge_in_a_clone_fetches_the_checkpoints_it_averages(mismatched: Path,
                                                              tmp_path: Path) -> None:
    """A teammate's clone, cache empty: merge brings the two checkpoints from the DVC
    remote; a refused merge there leaves the cache as it was (nothing fetched kept)."""
    project = mismatched
    bare, store = tmp_path / "team.git", tmp_path / "dvc-store"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(project, "switch", "-q", "main")
    git(project, "remote", "add", "origin", str(bare))
    ok(cli(project, "init"))  # nothing to adopt twice: harmless
    import subprocess
    import sys

    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run([*dvc, "remote", "add", "-d", "store", str(store)], cwd=project, check=True)
    git(project, "commit", "-qam", "the team's DVC remote")
    git(project, "push", "-q", "origin", "main")
    ok(cli(project, "push", "a", "b", "narrow"))
    clone = tmp_path / "bob"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    ok(cli(clone, "init"))
    assert cache_files(clone) == set()
    before = snapshot(clone)
    refused = cli(clone, "merge", "a", "narrow", "--name", "bad")
    assert refused.returncode == 20, refused.stderr
    assert snapshot(clone) == before  # the fetched checkpoints are gone again
    merged = jcli(clone, "merge", "a", "b", "--name", "soup2")
    assert isinstance(merged, dict) and len(merged["averaged"]) == 4
    tips = [git(project, "rev-parse", f"mlfork/{r}").strip() for r in ("a", "b")]
    sa, sb = (model_arrays(checkpoint(project, tip)) for tip in tips)
    theirs = model_arrays(checkpoint(clone, merged["commit"]))
    for name, tensor in theirs.items():
        mean = ((sa[name].astype(np.float64) + sb[name].astype(np.float64)) / 2).astype(np.float32)
        assert np.array_equal(tensor, mean), name
