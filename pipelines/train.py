"""Stage train: one iteration of training, resumed from models/resume.

An empty models/resume means "start fresh". Otherwise it is the previous
iteration's checkpoint, and everything is restored from it (model and optimizer
arrays and all random states), so that resuming gives the same bytes as training
straight through.
"""

import os
import random
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(__file__))

import common  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

RESUME, CHECKPOINT = "models/resume", "models/checkpoint"


def random_states(rng):
    """Every random state, as JSON-able values."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "rng": rng.bit_generator.state,
        "py_random": [version, list(internal), gauss_next],
        "np_global": [name, key.tolist(), pos, has_gauss, gauss],
    }


def restore_random_states(rng, states):
    rng.bit_generator.state = states["rng"]
    version, internal, gauss_next = states["py_random"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, pos, has_gauss, gauss = states["np_global"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))


def main():
    params = common.load_params()
    seed, iteration = params["seed"], params["iteration"]
    cfg, train = params["model"], params["train"]
    cls = models.model_class(cfg["name"])
    X, y = common.load_split("data/train.npz")
    rng = np.random.default_rng(seed)
    if os.path.getsize(RESUME) == 0:
        random.seed(seed)
        np.random.seed(seed)
        model = cls.create(cfg, X.shape[1], np.unique(y), rng)
        epochs_done, origin = 0, "fresh"
    else:
        arrays, meta = common.load_checkpoint(RESUME)
        restore_random_states(rng, meta["random_states"])
        epochs_done, origin = meta["epochs_done"], f"resumed from iteration {meta['iteration']}"
        if meta["model"] == cfg["name"]:
            model = cls.from_state(arrays)
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

    meta = {
        "model": cfg["name"],
        "iteration": iteration,
        "epochs_done": epochs_done,
        "lr": cfg["lr"],
        "random_states": random_states(rng),
    }
    common.save_checkpoint(CHECKPOINT, model.state(), meta)
    print(
        f"train: iteration {iteration}, {cfg['name']} lr {model.lr:g}"
        f"{' (exploration)' if exploring else ''}, {train['epochs_per_iteration']} epochs "
        f"({epochs_done} in total), {origin}"
    )


if __name__ == "__main__":
    main()
