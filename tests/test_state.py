"""`mlfork.state`, the exact-resume helper: a training loop (NumPy; PyTorch on the CPU)
stopped after k steps, saved, loaded in a new process and run k more steps ends bit for bit
where 2k steps straight through end; the same state gives the same bytes; loading never
unpickles. (CUDA generators are saved and restored by the same code where a GPU exists;
no test here has a GPU to run them on.)"""

from __future__ import annotations

import hashlib
import io
import os
import random
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


def run_script(tmp: Path, text: str, mode: str, count: int, name: str, *extra: str) -> None:
    """A training script in a process of its own: MODE (fresh, resume, naive) COUNT PATH."""
    script = tmp / "train.py"
    script.write_text(text)
    proc = subprocess.run([sys.executable, str(script), mode, str(count), str(tmp / name),
                           *extra],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr


def train(tmp: Path, mode: str, steps: int, name: str) -> bytes:
    run_script(tmp, TRAIN, mode, steps, name)
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


TORCH_TRAIN = '''
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from mlfork import state

mode, epochs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.use_deterministic_algorithms(True)
state.seed_everything(3)
x = torch.linspace(-1, 1, 96 * 6).reshape(96, 6)
y = (x.sum(dim=1, keepdim=True) > 0).float()
loader_rng = torch.Generator().manual_seed(5)
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=loader_rng)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
start = 0
if mode in ("resume", "naive"):
    start = state.load(path + ".ckpt", generators={"loader": loader_rng}, model=model,
                       opt=opt, sched=sched)["epoch"]
if mode == "naive":  # everything back but the random generators
    state.seed_everything(3)
    loader_rng.manual_seed(5)
for epoch in range(start, start + epochs):
    for xb, yb in loader:                  # the shuffling draws from loader_rng
        loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yb)  # dropout
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()
state.save(path + ".ckpt", epoch=start + epochs, generators={"loader": loader_rng},
           model=model, opt=opt, sched=sched)
'''


def torch_train(tmp: Path, mode: str, epochs: int, name: str) -> bytes:
    run_script(tmp, TORCH_TRAIN, mode, epochs, name)
    return (tmp / f"{name}.ckpt").read_bytes()


def test_torch_k_epochs_saved_and_resumed_equal_2k_epochs_bit_for_bit(tmp_path: Path) -> None:
    """A small network with dropout, AdamW and a step schedule, fed by a shuffling
    DataLoader: 2 epochs, save, load in a new process, 2 more: the checkpoint (model,
    optimizer moments, schedule, every generator) is the same file, byte for byte, as after
    4 epochs straight; restarting the generators instead gives another one."""
    import torch  # noqa: F401 - the dev extra installs it: this test runs in CI, never skipped

    straight = torch_train(tmp_path, "fresh", 4, "straight")
    torch_train(tmp_path, "fresh", 2, "split")
    assert torch_train(tmp_path, "resume", 2, "split") == straight
    torch_train(tmp_path, "fresh", 2, "naive")
    assert torch_train(tmp_path, "naive", 2, "naive") != straight


MID_EPOCH_TRAIN = '''
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from mlfork import state

mode, steps, path, workers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.use_deterministic_algorithms(True)
state.seed_everything(3)
x = torch.linspace(-1, 1, 90 * 6).reshape(90, 6)
y = (x.sum(dim=1, keepdim=True) > 0).float()
loader = StatefulDataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(5), num_workers=workers)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)
step, order = 0, []
if mode == "resume":  # the loader's position in its epoch and its generator come back
    step = state.load(path + ".ckpt", model=model, opt=opt, sched=sched, loader=loader)["step"]
end = step + steps
while step < end:
    for xb, yb in loader:
        loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yb)  # dropout
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        order.append(xb[:, 0].tolist())
        step += 1
        if step == end:  # stops inside an epoch
            break
state.save(path + ".ckpt", step=step, info={"order": order}, model=model, opt=opt,
           sched=sched, loader=loader)
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_inside_an_epoch_with_a_stateful_data_loader_is_exact(
        tmp_path: Path, workers: int) -> None:
    """torchdata's StatefulDataLoader (6 batches an epoch, the last one short) stopped after
    8 batches, inside its second epoch, saved with the model, and loaded in a new process:
    the rest of that epoch and the next ones come in the order of a run straight through,
    and the checkpoint after 17 batches is that run's, byte for byte (its data loader's
    state included). The loader's own generator is saved with it (not passed in
    `generators`); its restore draws from it, and happens before the generators are put
    back."""
    def train(mode: str, steps: int, name: str) -> bytes:
        run_script(tmp_path, MID_EPOCH_TRAIN, mode, steps, name, str(workers))
        return (tmp_path / f"{name}.ckpt").read_bytes()

    straight = train("fresh", 17, "straight")
    train("fresh", 8, "split")
    split_first = state.peek(tmp_path / "split.ckpt")["info"]["order"]
    resumed = train("resume", 9, "split")
    order = split_first + state.peek(tmp_path / "split.ckpt")["info"]["order"]
    assert order == state.peek(tmp_path / "straight.ckpt")["info"]["order"]
    assert len(order) == 17 and len(order[5]) < 16  # across two epoch ends
    # the info differs (each run's own batches): every other part is the same
    assert _without_info(resumed) == _without_info(straight)


def _without_info(data: bytes) -> tuple[object, list[bytes]]:
    tree, arrays = state.read_raw(io.BytesIO(data))
    tree = dict(tree)
    tree.pop("info", None)
    return tree, [a.tobytes() for a in arrays]


def test_torch_tensors_keep_their_dtype(tmp_path: Path) -> None:
    import torch

    box = Box(w=torch.arange(4, dtype=torch.bfloat16) / 3, n=torch.tensor([1, 2]),
              h=torch.ones(2, dtype=torch.float16))
    state.save(tmp_path / "t.ckpt", box=box)
    state.save(tmp_path / "u.ckpt", box=box)
    assert (tmp_path / "t.ckpt").read_bytes() == (tmp_path / "u.ckpt").read_bytes()
    back = Box()
    state.load(tmp_path / "t.ckpt", box=back)
    for key, tensor in box.d.items():
        assert back.d[key].dtype == tensor.dtype and torch.equal(back.d[key], tensor), key


def test_peek_reads_a_torch_state_where_torch_is_not_imported(tmp_path: Path) -> None:
    """An evaluation script that never imports torch reads a PyTorch checkpoint's tensors
    as NumPy arrays (a data loader's generator state among them)."""
    import torch

    model = torch.nn.Linear(3, 2)
    state.save(tmp_path / "m.ckpt", info={"kind": "linear"}, model=model)
    code = ("import sys, numpy as np; from mlfork import state\n"
            "s = state.peek(sys.argv[1])\n"
            "assert 'torch' not in sys.modules\n"
            "w = s['objects']['model']['weight']\n"
            "np.save(sys.argv[2], w)\n"
            "print(type(w).__name__, w.dtype, w.shape, s['info']['kind'])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.ckpt"),
                           str(tmp_path / "w.npy")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ndarray", "float32", "(2,", "3)", "linear"]
    assert np.array_equal(np.load(tmp_path / "w.npy"), model.weight.detach().numpy())


def test_info_and_peek_read_a_state_without_touching_any_generator(tmp_path: Path) -> None:
    state.seed_everything(1)
    state.save(tmp_path / "s.ckpt", epoch=3, info={"model": "mlp", "sizes": [64, 10]},
               model=Box(w=np.arange(4.0)))
    random_before, numpy_before = random.getstate(), np.random.get_state(legacy=True)
    saved = state.peek(tmp_path / "s.ckpt")
    assert saved["epoch"] == 3 and saved["info"] == {"model": "mlp", "sizes": [64, 10]}
    assert np.array_equal(saved["objects"]["model"]["w"], np.arange(4.0))
    assert random.getstate() == random_before
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(np.random.get_state(legacy=True), numpy_before, strict=True))


@pytest.mark.skipif("not __import__('torch').cuda.is_available()",
                    reason="no CUDA device on this machine: the CUDA generators' round trip"
                           " did not run (it is not counted as passed)")
def test_cuda_generators_round_trip(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(7)
    torch.rand(3, device="cuda")
    state.save(tmp_path / "c.ckpt")
    want = [torch.rand(3, device=f"cuda:{d}") for d in range(torch.cuda.device_count())]
    state.load(tmp_path / "c.ckpt")
    got = [torch.rand(3, device=f"cuda:{d}") for d in range(torch.cuda.device_count())]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
