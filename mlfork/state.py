"""Exact resume for stage scripts: the whole training state in one file, saved and loaded in
one call each.

    from mlfork import state

    state.seed_everything(0)
    rng = np.random.default_rng(0)
    if resume_path.exists():
        counters = state.load(resume_path, generators={"data": rng}, model=model)
    ...
    state.save(out_path, step=step, epoch=epoch, generators={"data": rng}, model=model)

What it holds: the states of Python's `random` and of NumPy's legacy global generator, of
every generator passed in `generators` (a `numpy.random.Generator`, or a `torch.Generator`
such as a DataLoader's), of every object passed by keyword that has
`state_dict()`/`load_state_dict()` (a model, an optimizer, a scheduler, an AMP scaler), the
counters (`step`, `epoch`, `samples`), and the determinism settings (`PYTHONHASHSEED`; with
PyTorch, `torch.use_deterministic_algorithms`, cuDNN's flags and `CUBLAS_WORKSPACE_CONFIG`):
a warning at load time names any that differ. With PyTorch imported by the script, torch's
CPU generator and every CUDA device's are saved too, the generator a data loader given
as an object draws from (torchdata's `StatefulDataLoader`: a resume inside an epoch is
exact), and tensors anywhere in a state
(kept with their dtype; loaded on the CPU, where `load_state_dict` moves them). The file is
a zip of NumPy `.npy` arrays and one JSON document: loading it unpickles nothing, and the
same state always gives the same bytes (so checkpoint hashes compare, as `mlfork verify`
does). PyTorch is never imported by this module: it is used when the script has imported it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

FORMAT = "mlfork.state/1"
_STAMP = (1980, 1, 1, 0, 0, 0)  # every zip entry's time: the same state, the same bytes


class StateError(ValueError):
    """A state file that cannot be loaded into what was given (named in the message)."""


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's legacy global generator and (when the script has
    imported it) PyTorch's generators with `seed`. (Set
    PYTHONHASHSEED in the stage's environment too: mlfork sets it from the config's
    `seed` for the stages it runs.)"""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = _torch()
    if torch is not None:
        torch.manual_seed(seed)  # the CPU generator and every CUDA device's


def save(
    path: str | os.PathLike[str],
    *,
    step: int = 0,
    epoch: int = 0,
    samples: int = 0,
    generators: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    **objects: Any,
) -> None:
    """Write the training state to `path` (atomically: a reader never sees half a file).
    `info`: values of your own (numbers, strings, lists, dicts, arrays) that `peek` gives
    back without loading anything: the model's kind, the iteration, the settings."""
    import numpy as np

    arrays: list[Any] = []
    # the objects' states first: a StatefulDataLoader not iterated yet draws from its
    # generator to give its state, and the generators are saved as they are after that
    states = {name: _encode(_state_of(name, obj), arrays) for name, obj in sorted(objects.items())}
    tree = {
        "random": _encode(random.getstate(), arrays),
        "numpy": _encode(np.random.get_state(legacy=True), arrays),
        "generators": {name: _encode(_generator_state(gen), arrays)
                       for name, gen in sorted((generators or {}).items())},
        "objects": states,
        "torch": _encode(_torch_rng(), arrays),
        "counters": {"step": int(step), "epoch": int(epoch), "samples": int(samples)},
        "determinism": _determinism(),
    }
    attached = _attached(objects, generators or {})
    if attached:
        tree["attached"] = {name: _encode(_generator_state(gen), arrays)
                            for name, gen in sorted(attached.items())}
    if info:
        tree["info"] = _encode(dict(info), arrays)
    write_raw(path, tree, arrays)


def peek(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a state file holds, put back nowhere: its counters (`step`, `epoch`,
    `samples`), its `info`, and its `objects` (each object's state as saved: the arrays of
    a NumPy model; the tensors of a PyTorch one, as tensors when the script has imported
    torch, else as NumPy arrays, a bfloat16 one as its bits in int16). No random state
    changes: what an evaluation stage reads."""
    tree, arrays = read_raw(path)
    arrays_only = _torch() is None
    out: dict[str, Any] = {k: int(v) for k, v in tree["counters"].items()}
    out["info"] = _decode(tree.get("info") or {"__dict__": []}, arrays, arrays_only)
    out["objects"] = {name: _decode(value, arrays, arrays_only)
                      for name, value in tree["objects"].items()}
    return out


def to_bytes(tree: dict[str, Any], arrays: list[Any]) -> bytes:
    """The file's bytes for an encoded state (`read_raw`'s pair): the same state, the same
    bytes."""
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        doc = {"format": FORMAT, "state": tree}
        _entry(zf, "state.json", json.dumps(doc, sort_keys=True, indent=1).encode("utf-8"))
        for i, array in enumerate(arrays):
            out = io.BytesIO()
            np.save(out, array, allow_pickle=False)
            _entry(zf, f"arrays/{i:06d}.npy", out.getvalue())
    return buffer.getvalue()


def write_raw(path: str | os.PathLike[str], tree: dict[str, Any], arrays: list[Any]) -> None:
    """Write an encoded state atomically (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(to_bytes(tree, arrays))
    os.replace(tmp, target)


def read_raw(path: str | os.PathLike[str] | IO[bytes]) -> tuple[dict[str, Any], list[Any]]:
    """A state file (or its bytes in a binary file object) as saved, without putting
    anything back: its encoded tree (the JSON document's `state`) and its arrays (NumPy; a
    tensor's array carries its dtype in the tree). No torch needed. StateError when it is
    not a state file."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            doc = json.loads(zf.read("state.json"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise StateError(f"{path}: not an {FORMAT} file")
            arrays = [np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
                      for name in sorted(n for n in zf.namelist() if n.startswith("arrays/"))]
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"{path}: cannot be read as a training state ({exc})") from exc
    return doc["state"], arrays


def leaves(encoded: Any, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted name, reference) of every array or tensor of an encoded value, in order:
    the reference's `__array__`/`__tensor__` indexes `read_raw`'s arrays."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(encoded, list):
        for i, v in enumerate(encoded):
            out += leaves(v, f"{prefix}{i}.")
    elif isinstance(encoded, dict):
        if "__array__" in encoded or "__tensor__" in encoded:
            out.append((prefix.rstrip("."), encoded))
        elif "__dict__" in encoded:
            for k, v in encoded["__dict__"]:
                out += leaves(v, f"{prefix}{k}.")
        elif "__tuple__" in encoded:
            out += leaves(encoded["__tuple__"], prefix)
        elif "__map__" in encoded:
            for k, v in encoded["__map__"]:
                out += leaves(v, f"{prefix}{k}.")
    return out


def load(
    path: str | os.PathLike[str],
    *,
    generators: Mapping[str, Any] | None = None,
    **objects: Any,
) -> dict[str, int]:
    """Put the state of `path` back: Python's `random`, NumPy's global generator, each
    generator and object named as when it was saved. Returns the counters (step, epoch,
    samples). StateError names what is missing or extra."""
    import numpy as np

    tree, arrays = read_raw(path)
    _match("generator", tree["generators"], generators or {}, path)
    _match("object", tree["objects"], objects, path)
    random.setstate(_decode(tree["random"], arrays))
    np.random.set_state(_decode(tree["numpy"], arrays))
    for name, obj in objects.items():
        obj.load_state_dict(_decode(tree["objects"][name], arrays))
        if getattr(obj, "next_iter_state", None) is not None and hasattr(obj, "_get_iterator"):
            # a StatefulDataLoader restores on its next iter(), drawing from its generator
            # in an order its own restore does not undo: restored now, the generators after
            obj.state_dict()
    for name, gen in (generators or {}).items():
        _set_generator_state(gen, _decode(tree["generators"][name], arrays))
    attached = _attached(objects, generators or {})
    for name, saved in (tree.get("attached") or {}).items():
        if name in attached:
            _set_generator_state(attached[name], _decode(saved, arrays))
    _set_torch_rng(_decode(tree.get("torch"), arrays), path)
    now = _determinism()
    for key, saved in sorted((tree.get("determinism") or {}).items()):
        if key in now and now[key] != saved:
            warnings.warn(f"{path} was saved with {key}={saved}, this process has"
                          f" {now[key]}: the run may not go on bit for bit", stacklevel=2)
    return {k: int(v) for k, v in tree["counters"].items()}


def _torch() -> Any:
    """PyTorch, if the script has imported it (this module never imports it itself)."""
    return sys.modules.get("torch")


def _attached(objects: Mapping[str, Any], generators: Mapping[str, Any]) -> dict[str, Any]:
    """The torch generators objects draw from that `generators` does not name (a data
    loader's `generator=`), by the object's name: saved and put back with it."""
    torch = _torch()
    if torch is None:
        return {}
    given = {id(gen) for gen in generators.values()}
    return {name: obj.generator for name, obj in sorted(objects.items())
            if isinstance(getattr(obj, "generator", None), torch.Generator)
            and id(obj.generator) not in given}


def _generator_state(gen: Any) -> Any:
    if hasattr(gen, "bit_generator"):  # numpy.random.Generator
        return {"numpy": gen.bit_generator.state}
    if hasattr(gen, "get_state") and hasattr(gen, "set_state"):  # torch.Generator
        return {"torch": gen.get_state()}
    raise StateError(f"a {type(gen).__name__} is not a generator: pass numpy.random.Generator"
                     " or torch.Generator objects in generators={...}")


def _set_generator_state(gen: Any, saved: dict[str, Any]) -> None:
    if "numpy" in saved and hasattr(gen, "bit_generator"):
        gen.bit_generator.state = saved["numpy"]
    elif "torch" in saved and hasattr(gen, "set_state"):
        gen.set_state(saved["torch"])
    else:
        raise StateError(f"the generator saved is a {next(iter(saved))} one, the one given a"
                         f" {type(gen).__name__}")


def _torch_rng() -> Any:
    torch = _torch()
    if torch is None:
        return None
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": list(cuda)}


def _set_torch_rng(saved: Any, path: Any) -> None:
    torch = _torch()
    if not saved or torch is None:
        return
    torch.set_rng_state(saved["cpu"])
    cuda = list(saved.get("cuda") or [])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and available == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda or available:
        warnings.warn(f"{path} holds the generator states of {len(cuda)} CUDA device(s), this"
                      f" process has {available}: their random numbers will differ",
                      stacklevel=3)


def _determinism() -> dict[str, Any]:
    out: dict[str, Any] = {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED")}
    torch = _torch()
    if torch is not None:
        out["torch.use_deterministic_algorithms"] = bool(
            torch.are_deterministic_algorithms_enabled())
        out["torch.backends.cudnn.deterministic"] = bool(torch.backends.cudnn.deterministic)
        out["torch.backends.cudnn.benchmark"] = bool(torch.backends.cudnn.benchmark)
        out["CUBLAS_WORKSPACE_CONFIG"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    return out


def _state_of(name: str, obj: Any) -> Any:
    if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
        raise StateError(f"'{name}' has no state_dict()/load_state_dict(): pass objects that"
                         " do, and NumPy generators in generators={...}")
    return obj.state_dict()


def _match(kind: str, saved: Mapping[str, Any], given: Mapping[str, Any], path: Any) -> None:
    missing, extra = sorted(set(saved) - set(given)), sorted(set(given) - set(saved))
    if missing or extra:
        raise StateError(f"{path}: the {kind}s saved are {sorted(saved)}, the ones given"
                         f" {sorted(given)}: pass the same names as when it was saved")


def _entry(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_STAMP)
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _encode(value: Any, arrays: list[Any]) -> Any:
    """JSON for `value`, its arrays (and NumPy scalars, as 0-d arrays) set aside, floats
    exact (as hex), tuples and non-string keys kept."""
    import numpy as np

    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits, as int16
            array = tensor.view(torch.int16).numpy().copy()
        else:
            array = tensor.numpy().copy()
        arrays.append(array)
        return {"__tensor__": len(arrays) - 1, "dtype": dtype}
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype == object:
            raise StateError("an array of Python objects cannot be saved without pickling")
        arrays.append(array)
        return {"__array__": len(arrays) - 1, "scalar": isinstance(value, np.generic)}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return {"__float__": value.hex()}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": [[k, _encode(v, arrays)] for k, v in value.items()]}
        return {"__map__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    raise StateError(f"cannot save a {type(value).__name__} without pickling it: give its"
                     " state as arrays, numbers, strings, lists, tuples and dicts")


def _decode(value: Any, arrays: list[Any], arrays_only: bool = False) -> Any:
    """The value `_encode` encoded; `arrays_only`: tensors as their NumPy arrays."""
    if isinstance(value, list):
        return [_decode(v, arrays, arrays_only) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        array = arrays[value["__array__"]]
        return array[()] if value.get("scalar") else array
    if "__tensor__" in value and arrays_only:
        return arrays[value["__tensor__"]]
    if "__tensor__" in value:
        torch = _torch()
        if torch is None:
            raise StateError("the state holds PyTorch tensors: import torch before loading it")
        tensor = torch.from_numpy(arrays[value["__tensor__"]].copy())
        if value["dtype"] == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return tensor
    if "__float__" in value:
        return float.fromhex(value["__float__"])
    if "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if "__tuple__" in value:
        return tuple(_decode(v, arrays, arrays_only) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, arrays, arrays_only) for k, v in value["__dict__"]}
    if "__map__" in value:
        return {_decode(k, arrays, arrays_only): _decode(v, arrays, arrays_only)
                for k, v in value["__map__"]}
    raise StateError(f"unknown entry in a state file: {sorted(value)[:3]}")
