"""`mlfork.state`, the exact-resume helper (NumPy and Python's `random`; PyTorch is not
handled yet): a training loop stopped after k steps, saved, loaded in a new process and run
k more steps ends bit for bit where 2k steps straight through end; the same state gives the
same bytes; loading never unpickles."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlfork import state

TRAIN = '''
import random, sys
import numpy as np
from mlfork import state


class Model:
    """A linear model trained by SGD with momentum, its state a dict of arrays."""

    def __init__(self):
        self.w = np.zeros(8)
        self.v = np.zeros(8)

    def state_dict(self):
        return {"w": self.w.copy(), "v": self.v.copy()}

    def load_state_dict(self, d):
        self.w, self.v = d["w"].copy(), d["v"].copy()


class Schedule:
    """A step-decay learning rate with a float that must come back exactly."""

    def __init__(self):
        self.lr, self.seen = 0.1, 0

    def state_dict(self):
        return {"lr": self.lr, "seen": self.seen, "milestones": (3, 7), 5: "int key"}

    def load_state_dict(self, d):
        self.lr, self.seen = d["lr"], d["seen"]
        assert d["milestones"] == (3, 7) and d[5] == "int key"

    def step(self):
        self.seen += 1
        if self.seen in (3, 7):
            self.lr *= 0.37


mode, steps, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
state.seed_everything(7)
data = np.random.default_rng(11)           # shuffling
x = np.linspace(-1, 1, 64 * 8).reshape(64, 8)
y = x @ np.arange(8) + 0.1
model, sched, start = Model(), Schedule(), 0
if mode in ("resume", "naive"):
    start = state.load(path + ".ckpt", generators={"data": data}, model=model,
                       sched=sched)["step"]
if mode == "naive":  # model and schedule back, but the RNGs started again: not exact
    state.seed_everything(7)
    data = np.random.default_rng(11)
for step in range(start, start + steps):
    batch = data.permutation(64)[:16]       # the sampler's state matters
    keep = np.random.rand(8) > 0.2          # "dropout" from the global generator
    jitter = random.random() * 1e-3         # and Python's random
    grad = ((x[batch] * keep) @ model.w - y[batch]) @ (x[batch] * keep) / 16
    model.v = 0.9 * model.v + grad + jitter
    model.w = model.w - sched.lr * model.v
    sched.step()
state.save(path + ".ckpt", step=start + steps, generators={"data": data}, model=model,
           sched=sched)
np.save(path + ".w.npy", model.w)
'''


def train(tmp: Path, mode: str, steps: int, name: str) -> bytes:
    script = tmp / "train.py"
    script.write_text(TRAIN)
    proc = subprocess.run([sys.executable, str(script), mode, str(steps), str(tmp / name)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr
    return (tmp / f"{name}.w.npy").read_bytes()


def test_k_steps_saved_and_resumed_equal_2k_steps_bit_for_bit(tmp_path: Path) -> None:
    straight = train(tmp_path, "fresh", 10, "straight")
    train(tmp_path, "fresh", 5, "split")
    resumed = train(tmp_path, "resume", 5, "split")
    assert resumed == straight
    # and the checkpoints agree too: the same state, the same bytes
    assert (tmp_path / "split.ckpt").read_bytes() == (tmp_path / "straight.ckpt").read_bytes()
    # the RNG states are what makes it exact: restarted, they give another model
    train(tmp_path, "fresh", 5, "naive")
    assert train(tmp_path, "naive", 5, "naive") != straight


class Box:
    def __init__(self, **d: object) -> None:
        self.d = d

    def state_dict(self) -> dict[str, object]:
        return self.d

    def load_state_dict(self, d: dict[str, object]) -> None:
        self.d = d


def test_the_same_state_gives_the_same_bytes(tmp_path: Path) -> None:
    def once(name: str) -> str:
        state.seed_everything(3)
        rng = np.random.default_rng(5)
        rng.random(3)
        state.save(tmp_path / name, step=4, generators={"g": rng},
                   box=Box(a=np.arange(5, dtype=np.float32), b=np.float64(0.1), c=[1, "x"]))
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    assert once("a.ckpt") == once("b.ckpt")
    box = Box()
    rng = np.random.default_rng(0)
    assert state.load(tmp_path / "a.ckpt", generators={"g": rng}, box=box) == {
        "step": 4, "epoch": 0, "samples": 0}
    assert box.d["a"].dtype == np.float32 and box.d["b"] == np.float64(0.1)
    assert box.d["c"] == [1, "x"]


def test_loading_never_unpickles(tmp_path: Path) -> None:
    state.save(tmp_path / "ok.ckpt", box=Box(a=np.arange(3)))
    evil = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(tmp_path / "ok.ckpt") as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.startswith("arrays/"):
                out = io.BytesIO()
                np.save(out, np.array([object()], dtype=object), allow_pickle=True)
                data = out.getvalue()
            dst.writestr(name, data)
    with pytest.raises(state.StateError, match="cannot be read"):
        state.load(evil, box=Box())
    with pytest.raises(state.StateError, match="without pickling"):
        state.save(tmp_path / "x.ckpt", box=Box(a=np.array([object()], dtype=object)))
    with pytest.raises(state.StateError, match="without pickling"):
        state.save(tmp_path / "x.ckpt", box=Box(a={1, 2}))
    assert not (tmp_path / "x.ckpt").exists()


def test_names_must_match_and_hash_seed_changes_warn(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "1")
    state.save(tmp_path / "s.ckpt", model=Box(w=np.ones(2)))
    with pytest.raises(state.StateError, match=r"objects saved are \['model'\]"):
        state.load(tmp_path / "s.ckpt", net=Box())
    with pytest.raises(state.StateError, match="no state_dict"):
        state.save(tmp_path / "t.ckpt", model=object())
    monkeypatch.setenv("PYTHONHASHSEED", "2")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        state.load(tmp_path / "s.ckpt", model=Box())
    assert any("PYTHONHASHSEED=1" in str(w.message) for w in seen)
    with pytest.raises(state.StateError, match="not an mlfork.state"):
        bad = tmp_path / "bad.ckpt"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("state.json", '{"format": "other"}')
        state.load(bad)
