"""Stage train: one iteration (a few epochs) of a small PyTorch network, resumed exactly.

models/resume is the previous iteration's checkpoint (empty: start fresh). mlfork.state
saves and loads the whole training state in one call each: the model, the optimizer, the
scheduler, the data loader's shuffling generator, the RNGs (dropout draws from torch's),
and the step and epoch counters. So resuming gives the same numbers, bit for bit, as
training straight through, and a fork starts exactly where its parent was.

Each batch's loss goes to dvclive on the run's global step axis: the step counter comes
back from the checkpoint, so a fork's first step follows its fork point's last.
"""

import os
from pathlib import Path

import numpy as np
import torch
import yaml
from dvclive import Live
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlfork import state

RESUME, CHECKPOINT = "models/resume", "models/checkpoint"

torch.set_num_threads(1)  # the same arithmetic on every machine
torch.use_deterministic_algorithms(True)

p = yaml.safe_load(Path("params.yaml").read_text())
cfg, train = p["model"], p["train"]
fresh = os.path.getsize(RESUME) == 0
if fresh:
    state.seed_everything(p["seed"])  # Python's, NumPy's and torch's generators
data = np.load("data/train.npz")
val = np.load("data/val.npz")
X_val, y_val = torch.from_numpy(val["X"]), torch.from_numpy(val["y"])

net = nn.Sequential(
    nn.Linear(64, cfg["hidden"]), nn.ReLU(), nn.Dropout(cfg["dropout"]),
    nn.Linear(cfg["hidden"], 10),
)
optimizer = torch.optim.AdamW(net.parameters(), lr=train["lr"],
                              weight_decay=train["weight_decay"])
scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train["gamma"])
shuffle = torch.Generator()
loader = DataLoader(TensorDataset(torch.from_numpy(data["X"]), torch.from_numpy(data["y"])),
                    batch_size=train["batch_size"], shuffle=True, generator=shuffle)

objects = {"model": net, "optimizer": optimizer, "scheduler": scheduler}
if fresh:
    shuffle.manual_seed(p["seed"])
    counters = {"step": 0, "epoch": 0, "samples": 0}
else:
    counters = state.load(RESUME, generators={"shuffle": shuffle}, **objects)
    saved_lr = scheduler.base_lrs[0]
    if saved_lr != train["lr"]:  # a fork with another learning rate: rescale the schedule
        for group in optimizer.param_groups:
            group["lr"] *= train["lr"] / saved_lr
            group["initial_lr"] = train["lr"]
        scheduler.base_lrs = [train["lr"]]

loss_fn = nn.CrossEntropyLoss()
step, epoch, samples = counters["step"], counters["epoch"], counters["samples"]
with Live("dvclive", dvcyaml=None, save_dvc_exp=False, report=None) as live:
    live.step = step  # the global step: it goes on from the checkpoint's counter
    for _ in range(train["epochs_per_iteration"]):
        net.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimizer.step()
            live.log_metric("train/loss", loss.item())
            live.log_metric("train/lr", optimizer.param_groups[0]["lr"])
            live.next_step()
            step += 1
            samples += len(yb)
        scheduler.step()
        epoch += 1
    net.eval()
    with torch.no_grad():
        logits = net(X_val)
        live.log_metric("val/loss", loss_fn(logits, y_val).item(), plot=False)
        live.log_metric("val/accuracy", (logits.argmax(1) == y_val).float().mean().item(),
                        plot=False)

state.save(CHECKPOINT, step=step, epoch=epoch, samples=samples,
           generators={"shuffle": shuffle}, **objects)
print(f"train: iteration {p['iteration']}, lr {train['lr']:g}, epochs {epoch}, steps {step}")
