"""Stage train: one iteration of training, resumed from models/resume.

An empty models/resume means "start fresh". Otherwise it is the previous iteration's
checkpoint, written with mlfork.state: the model's arrays, the data-order generator, the
global random states (Python's, NumPy's) and the epoch counter come back in one call, so
that resuming gives the same bytes as training straight through.
"""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(__file__))

import common  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

from mlfork import state  # noqa: E402

RESUME, CHECKPOINT = "models/resume", "models/checkpoint"


def main():
    params = common.load_params()
    seed, iteration = params["seed"], params["iteration"]
    cfg, train = params["model"], params["train"]
    cls = models.model_class(cfg["name"])
    X, y = common.load_split("data/train.npz")
    rng = np.random.default_rng(seed)
    if os.path.getsize(RESUME) == 0:
        state.seed_everything(seed)
        model = cls.create(cfg, X.shape[1], np.unique(y), rng)
        epochs_done, origin = 0, "fresh"
    else:
        saved = common.Arrays()
        counters = state.load(RESUME, generators={"rng": rng}, model=saved)
        meta = state.peek(RESUME)["info"]
        epochs_done, origin = counters["epoch"], f"resumed from iteration {meta['iteration']}"
        if meta["model"] == cfg["name"]:
            model = cls.from_state(saved.arrays)
            change = model.mismatch(cfg)
        else:
            change = f"{meta['model']} in the checkpoint"
        if change:  # a fork that changes the model: a new one, the random states go on
            model = cls.create(cfg, X.shape[1], np.unique(y), rng)
            epochs_done, origin = 0, f"new model ({change}), {origin}"

    exploring = iteration < params["exploration_iterations"]
    model.lr = cfg["lr"] * (train["exploration_lr_factor"] if exploring else 1.0)
    model.alpha = cfg["alpha"]
    for _ in range(train["epochs_per_iteration"]):
        order = rng.permutation(len(y))
        for start in range(0, len(y), train["batch_size"]):
            batch = order[start : start + train["batch_size"]]
            model.partial_fit(X[batch], y[batch])
    epochs_done += train["epochs_per_iteration"]

    state.save(
        CHECKPOINT, epoch=epochs_done, generators={"rng": rng},
        info={"model": cfg["name"], "iteration": iteration, "lr": cfg["lr"]},
        model=common.Arrays(model.state()),
    )
    print(
        f"train: iteration {iteration}, {cfg['name']} lr {model.lr:g}"
        f"{' (exploration)' if exploring else ''}, {train['epochs_per_iteration']} epochs "
        f"({epochs_done} in total), {origin}"
    )


if __name__ == "__main__":
    main()
