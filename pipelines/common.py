"""Small helpers shared by the pipeline stages (run from the repository root).

Only numpy, PyYAML and the standard library: train and evaluate import this module,
and their start-up time is most of an iteration's time.
"""

import io
import json
import os
import zipfile

import numpy as np
import yaml

PARAMS = "params.yaml"
META = "meta"  # the checkpoint's entry holding its JSON metadata


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


def save_checkpoint(path, arrays, meta):
    """A checkpoint is an .npz of the model's arrays plus `meta` (JSON-able values,
    stored as the UTF-8 bytes of its JSON with sorted keys). No pickle."""
    if META in arrays:
        raise ValueError(f"the array name {META!r} is reserved for the metadata")
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    atomic_write(path, _npz_bytes({**arrays, META: blob}))


def load_checkpoint(path):
    """(arrays, meta) of a checkpoint written by save_checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != META}
            meta = json.loads(data[META].tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SystemExit(
            f"{path} is not a checkpoint in this pipeline's format (an .npz of arrays and JSON"
            f" metadata, no pickle; {type(exc).__name__})"
        ) from exc
    return arrays, meta
