"""Small helpers shared by the pipeline stages (run from the repository root).

Only numpy, PyYAML and the standard library (mlfork.state, for the checkpoints, is
imported by train and evaluate themselves): train and evaluate import this module,
and their start-up time is most of an iteration's time.
"""

import io
import os

import numpy as np
import yaml

PARAMS = "params.yaml"


def load_params(path=PARAMS):
    """The run's parameters, as written by mlfork before each iteration."""
    with open(path) as f:
        return yaml.safe_load(f)


def atomic_write(path, data):
    """Write bytes to a temp file next to `path`, then rename it onto `path`.

    The old `path` may be a hardlink into a cache, so it is replaced, never
    written in place.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _npz_bytes(arrays):
    """Uncompressed .npz of named arrays: the same arrays always give the same bytes
    (zip entries get a fixed timestamp, entries keep the order of `arrays`)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_split(path, X, y):
    atomic_write(path, _npz_bytes({"X": X, "y": y}))


def load_split(path):
    with np.load(path) as data:
        return data["X"], data["y"]


class Arrays:
    """A model's named arrays as an object mlfork.state saves and loads (state_dict)."""

    def __init__(self, arrays=None):
        self.arrays = dict(arrays or {})

    def state_dict(self):
        return self.arrays

    def load_state_dict(self, arrays):
        self.arrays = dict(arrays)
