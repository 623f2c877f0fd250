"""Reading a checkpoint without running its code: the one way omnifuse loads a ``.ckpt``.

A ``.ckpt`` is a pickle, and unpickling can call any function the file names (``os.system`` ...): loading a shared
checkpoint must not run it. :func:`load_checkpoint` loads with ``torch.load(weights_only=True)`` (tensors, plain
Python values and an allowlist of classes); the allowlist adds only :data:`SAFE_TYPES`, the plain config dataclasses an
omnifuse task may keep in its hyper-parameters (a task built in Python keeps them as objects; ``omnifuse fit`` stores
dicts). A zip checkpoint (what ``torch.save`` and Lightning write) is first scanned without unpickling anything, so
the error names what the file would have imported. A refused file raises :class:`UnsafeCheckpointError`, one line::

    not a safe checkpoint: evil.ckpt: it names posix.system, which loading would import and call; re-save it ...

Lightning's own loads (``--ckpt_path``, ``load_from_checkpoint``) also use ``weights_only=True``;
:func:`register_safe_types` (called when ``omnifuse.tasks`` is imported) adds the same classes to torch's allowlist.

No Lightning import here: ``OmniModel`` (which must not import Lightning) loads checkpoints through this module.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from omnifuse._moved import MOVED

_CONFIG_CLASSES = (
    "omnifuse.tasks.model.FusionConfig",
    "omnifuse.moe_core.config.MoEDecoderConfig",
    "omnifuse.tasks.config.OptimizerConfig",
    "omnifuse.tasks.config.GenerationConfig",
    "omnifuse.tasks.speech_ctc.SpeechCTCConfig",
    "omnifuse.tasks.distill.DistillConfig",
    "omnifuse.finetune.lora.LoRAConfig",
    "omnifuse.tasks.clip_scorer.ScorerConfig",
)


def _with_old_paths(names: tuple[str, ...]) -> dict[str, str]:
    """Each name mapped to itself, plus the paths checkpoints written before the layout change use for the same class
    (``omnifuse/_moved.py``: a ``LoRAConfig`` pickled under the module it lived in before ``finetune/``)."""
    out = {name: name for name in names}
    for old, homes in MOVED.items():
        for name in names:
            module, _, cls = name.rpartition(".")
            if module in homes:
                out[f"{old}.{cls}"] = name
    return out


#: Name in a pickle -> where the class lives. Only these project classes may be rebuilt from a checkpoint: plain
#: dataclasses of ints, floats, strings and lists, whose construction runs no code of the file's choosing. Names are
#: resolved only when a checkpoint uses them (so this module imports nothing of ``tasks``).
SAFE_TYPES: dict[str, str] = _with_old_paths(_CONFIG_CLASSES)

RESAVE_HINT = (
    "re-save it with omnifuse.finetune.safe_load.resave_trusted(src, dst), only if you trust where it came from "
    "(that load runs the file's code), or ask its author for a model folder (omnifuse export)"
)


class CheckpointError(ValueError):
    """A checkpoint file omnifuse will not load; ``str(err)`` is one line that says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs more than tensors, plain values and :data:`SAFE_TYPES` (it could run code)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"not a safe checkpoint: {self.path}: {reason}; {RESAVE_HINT}")


def _resolve(target: str) -> type:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def register_safe_types() -> None:
    """Add :data:`SAFE_TYPES` to torch's ``weights_only`` allowlist, for loads omnifuse does not make itself
    (Lightning's ``--ckpt_path`` and ``load_from_checkpoint``). Imports their modules: call it from ``tasks``."""
    torch.serialization.add_safe_globals([(_resolve(target), name) for name, target in SAFE_TYPES.items()])


def unpickling_reason(error: BaseException) -> str:
    """The useful part of torch's long ``weights_only`` message (``Trying to load unsupported GLOBAL posix.system
    ...``, ``Unsupported global: GLOBAL ...``): its advice to load with ``weights_only=False`` is left out."""
    kept = []
    for paragraph in re.split(r"\n\s*\n", str(error)):
        text = " ".join(paragraph.split())
        text = re.sub(r"^.*WeightsUnpickler error:\s*", "", text)
        if not text or text.startswith(("Weights only load failed", "Check the documentation")):
            continue
        kept.append(re.split(r" (?:Please|Check the code)\b", text)[0].rstrip("."))
    reason = "; ".join(kept) or type(error).__name__
    return (reason[:300] + "...") if len(reason) > 300 else reason


def scan_checkpoint(path: str | Path) -> list[str]:
    """The globals a zip checkpoint's pickle names beyond torch's allowlist and :data:`SAFE_TYPES`, found without
    unpickling (raises :class:`UnsafeCheckpointError` when there are any). Returns the :data:`SAFE_TYPES` names it
    uses. A file that is not a zip checkpoint (legacy format) returns ``[]``: the restricted load itself decides."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint, or one the scanner cannot parse: the weights_only load decides
        return []
    unsafe = sorted(n for n in names if n not in SAFE_TYPES)
    if unsafe:
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise UnsafeCheckpointError(path, f"it names {shown}, which loading would import and call")
    return sorted(names)


def check_checkpoint(path: str | Path) -> None:
    """Raise what :func:`load_checkpoint` would raise for ``path``, cheaply where possible: a zip checkpoint is only
    scanned (nothing is unpickled), a legacy-format file is loaded the safe way."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    with path.open("rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"  # what torch.save and Lightning write
    if is_zip:
        scan_checkpoint(path)
    else:
        load_checkpoint(path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of ``path`` that never runs code from the file: tensors, plain Python values and
    :data:`SAFE_TYPES` only. Raises :class:`UnsafeCheckpointError` for anything else, :class:`CheckpointError` for a
    file that is not a readable checkpoint, ``FileNotFoundError`` for a missing one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    used = scan_checkpoint(path)
    allowed = [(_resolve(SAFE_TYPES[name]), name) for name in used]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(path, unpickling_reason(error)) from None
    except Exception as error:  # a truncated zip, random bytes, a text file: not a checkpoint at all
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise CheckpointError(f"not a readable checkpoint: {path}: {reason}") from None


_PLAIN = (bool, int, float, complex, str, bytes, torch.Tensor, torch.device, torch.dtype, torch.Size)


def _plain(value: Any, where: str) -> Any:
    """``value`` with numpy values turned into tensors / Python numbers; anything not loadable by
    :func:`load_checkpoint` raises ``TypeError`` naming where it sits."""
    import numpy as np

    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if name in SAFE_TYPES and dataclasses.is_dataclass(value):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    raise TypeError(f"{where} is a {name}, which a safe checkpoint cannot hold")


def resave_trusted(src: str | Path, dst: str | Path) -> Path:
    """Re-save a checkpoint YOU TRUST (loading it runs whatever code it holds) in a form :func:`load_checkpoint`
    accepts: numpy values become tensors / numbers, other dataclasses become dicts; any other object is an error
    naming where it sits. Returns ``dst``, after checking that it loads safely."""
    checkpoint = torch.load(src, map_location="cpu", weights_only=False)  # trusted by the caller, by contract
    try:
        plain = _plain(checkpoint, "checkpoint")
    except TypeError as error:
        raise CheckpointError(f"cannot re-save {src}: {error}") from None
    dst = Path(dst)
    torch.save(plain, dst)
    load_checkpoint(dst)
    return dst


__all__ = [
    "SAFE_TYPES",
    "CheckpointError",
    "check_checkpoint",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "register_safe_types",
    "resave_trusted",
    "scan_checkpoint",
    "unpickling_reason",
]
